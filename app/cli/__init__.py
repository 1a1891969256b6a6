"""The `approvals` command line: one module per command group, imported only when that group runs."""
