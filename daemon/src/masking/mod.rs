//! Masking: column rules and value detectors applied to responses (placeholder, being written).
