//! TODO(stage): config
