"""Who may do what: agents' and auditors' keys, and approvers' MFA step-up."""
