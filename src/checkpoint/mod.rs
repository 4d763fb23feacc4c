//! TODO(stage): checkpoint
