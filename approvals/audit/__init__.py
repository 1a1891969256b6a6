"""The audit log: hash-chained events, signed checkpoints, verification, chains and reports for auditors."""
