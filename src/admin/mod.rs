//! TODO(stage): admin
