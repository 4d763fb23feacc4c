//! TODO(stage): delivery
