//! TODO(stage): delivery::auth (endpoint security)
