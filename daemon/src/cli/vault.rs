//! `cordon vault` (placeholder, being written).
