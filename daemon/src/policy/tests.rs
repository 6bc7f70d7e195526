//! Table tests for the policy: rule kinds, evasion attempts, masked expressions, shipped policies.
