//! TODO(stage): telemetry
