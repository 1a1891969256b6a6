"""`approvals policies`: check a policy file, list the policy versions the service has loaded."""

from __future__ import annotations

import json
import sys

import click

from app.cli.support import fail, in_transaction, print_result, settings_or_exit
from approvals.audit.queries import policy_history
from approvals.policies.policy_file import PolicyError, evaluate, load_policies


@click.group()
def policies() -> None:
    """Check policy files."""


@policies.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--action", "actions", multiple=True, help="Also show how these actions would be judged.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def policies_check(file: str | None, actions: tuple[str, ...], as_json: bool) -> None:
    """Validate FILE (default: APPROVALS_POLICIES) and report what it holds."""
    path = file or str(settings_or_exit().policies)
    try:
        loaded = load_policies(path)
    except PolicyError as exc:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "valid": False,
                        "error": {
                            "path": exc.path,
                            "line": exc.line,
                            "field": exc.field,
                            "message": exc.message,
                        },
                    }
                )
            )
            sys.exit(1)
        fail(str(exc), 1)
    judged = [
        {"action": a, "decision": e.decision, "policy": e.policy_name, "reason": e.reason}
        for a in actions
        for e in [evaluate(loaded.policy_set, a)]
    ]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "path": path,
                    "sha256": loaded.sha256,
                    "policies": [r.display_name for r in loaded.policy_set.policies],
                    "evaluations": judged,
                }
            )
        )
        return
    click.echo(f"{path}: OK, {len(loaded.policy_set.policies)} policies, sha256 {loaded.sha256[:16]}")
    for item in judged:
        click.echo(f"  {item['action']}: {item['decision']} ({item['reason']})")


@policies.command("versions")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def policies_versions(as_json: bool) -> None:
    """Every policy content the service has loaded: version, hash, source, who loaded it and when."""
    rows = in_transaction(policy_history)
    lines = [
        f"v{r['version']}  {r['loaded_at']}  {r['sha256'][:16]}  {r['loaded_by']}  {r['source']}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no policy versions recorded")
