"""`python -m app.cli`: the same as the `approvals` command."""

from app.cli.main import main

main()
