//! TODO(stage): delivery::tls (endpoint security)
