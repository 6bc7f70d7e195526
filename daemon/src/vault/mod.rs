//! Vault: encrypted credential store (placeholder, being written).
