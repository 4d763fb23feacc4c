//! TODO(stage): delivery::signing (endpoint security)
