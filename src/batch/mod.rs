//! TODO(stage): batch
