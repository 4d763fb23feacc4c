//! TODO(stage): delivery::oauth2 (endpoint security)
