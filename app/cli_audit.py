"""`approvals audit ...` and `approvals keys ...`: verification, exports and auditor keys."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from app.chain_formats import CSV_COLUMNS, FORMATS, chain_filter, csv_row, csv_text, jsonl, parse_time
from app.cli_support import fail, in_transaction, print_result, settings_or_exit
from app.database import build_engine
from approvals.audit import VerifyReport, verify_all
from approvals.audit_queries import events_of_kind
from approvals.auditors import NewKey, add_auditor_key
from approvals.chains import count_chains, iter_chains
from approvals.errors import DomainError


@click.group()
def audit() -> None:
    """Verify the audit log and export approval chains."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(as_json: bool) -> None:
    """Recompute every hash chain; name the first broken link (exit 1 when one is found)."""
    report: VerifyReport = in_transaction(verify_all)
    brk = report.first_break
    result: dict[str, Any] = {"ok": report.ok, "chains": report.chains, "events": report.events}
    if brk is not None:
        result["first_break"] = {"chain_id": brk.chain_id, "seq": brk.seq, "problem": brk.problem}
    text = (
        f"OK: {report.chains} chains, {report.events} events verified"
        if brk is None
        else f"BROKEN: chain {brk.chain_id} at event {brk.seq}: {brk.problem}"
    )
    print_result(result, as_json, text)
    if brk is not None:
        sys.exit(1)


FILTERS = ("agent", "policy", "action", "approver", "status", "outcome")


@audit.command("export")
@click.option("--agent")
@click.option("--policy")
@click.option("--action")
@click.option("--approver", help="Slack user id or email of an approver.")
@click.option("--status", type=click.Choice(["pending", "approved", "rejected", "expired", "cancelled"]))
@click.option("--outcome", type=click.Choice(["succeeded", "failed", "none"]))
@click.option("--from", "created_from", help="ISO 8601 date or date-time (inclusive).")
@click.option("--to", "created_to", help="ISO 8601 date or date-time (exclusive).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
def audit_export(
    created_from: str | None, created_to: str | None, fmt: str, out: Path | None, **filters: Any
) -> None:
    """Stream every matching chain (JSON, JSON Lines or CSV); the population goes to stderr."""
    try:
        wanted = chain_filter({**filters, "from": created_from, "to": created_to})
    except DomainError as exc:
        fail(f"error: {exc.message}")
    settings = settings_or_exit()

    async def run(stream: IO[str]) -> int:
        engine = build_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                population = await count_chains(conn, wanted)
                click.echo(f"population: {population} chains", err=True)
                await _write(conn, stream, fmt, population)
            return population
        finally:
            await engine.dispose()

    async def _write(conn: AsyncConnection, stream: IO[str], fmt: str, population: int) -> None:
        written = 0
        with click.progressbar(length=population, label="exporting", file=sys.stderr) as bar:
            if fmt == "json":
                stream.write(f'{{"population": {population}, "chains": [')
            elif fmt == "csv":
                stream.write(csv_text([CSV_COLUMNS]))
            async for chain in iter_chains(conn, wanted):
                if fmt == "json":
                    stream.write(("," if written else "") + json.dumps(chain, ensure_ascii=False))
                elif fmt == "jsonl":
                    stream.write(jsonl(chain))
                else:
                    stream.write(csv_text([csv_row(chain)]))
                written += 1
                bar.update(1)
            if fmt == "json":
                stream.write("]}\n")

    if out is None:
        asyncio.run(run(sys.stdout))
    else:
        with out.open("w", encoding="utf-8", newline="") as handle:
            asyncio.run(run(handle))


@audit.command("events")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    required=True,
    help="Event kind, e.g. action_refused, click_refused, notification_failed (repeatable).",
)
@click.option("--from", "created_from", help="ISO 8601 date or date-time (inclusive).")
@click.option("--to", "created_to", help="ISO 8601 date or date-time (exclusive).")
@click.option("--json", "as_json", is_flag=True)
def audit_events(
    kinds: tuple[str, ...], created_from: str | None, created_to: str | None, as_json: bool
) -> None:
    """List audit events of some kinds: refused actions and clicks, undeliverable cards, and so on."""
    try:
        since, until = parse_time(created_from, "from"), parse_time(created_to, "to")
    except DomainError as exc:
        fail(f"error: {exc.message}")

    async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
        return await events_of_kind(conn, list(kinds), since=since, until=until)

    rows = in_transaction(work)
    lines = [
        f"{r['at']}  {r['kind']:<20} {r['chain_id']:<32} {json.dumps(r['data'], sort_keys=True)}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no events")


@click.group()
def keys() -> None:
    """API keys for people and tools other than agents."""


@keys.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["auditor"]), required=True)
@click.option("--json", "as_json", is_flag=True)
def keys_add(name: str, role: str, as_json: bool) -> None:
    """Create a key (shown once); auditor keys read the compliance API and nothing else."""

    async def work(conn: AsyncConnection) -> NewKey:
        return await add_auditor_key(conn, name=name)

    new = in_transaction(work)
    print_result(
        {"id": new.id, "name": new.name, "role": new.role, "api_key": new.api_key},
        as_json,
        f"{role} key {new.name} created ({new.id})\nAPI key (shown once): {new.api_key}",
    )
