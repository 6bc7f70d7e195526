//! Policy: SQL statements -> decisions (placeholder, being written).
