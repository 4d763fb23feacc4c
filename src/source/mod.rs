//! TODO(stage): source
