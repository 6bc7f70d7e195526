//! `cordon policy check` (placeholder, being written).
