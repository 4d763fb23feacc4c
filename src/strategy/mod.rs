//! TODO(stage): strategy
