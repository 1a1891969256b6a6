"""`approvals retention purge`: remove what is older than APPROVALS_RETENTION_DAYS, one batch per transaction.

Each batch is its own transaction with its own signed purge record, so a purge of years of data
neither holds locks for long nor loses its work when interrupted: run it again and it carries on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys

import click

from app.bootstrap import StartupError, operator_identity, prepare_database
from app.checkpoint_keys import CheckpointKeyError, load_checkpoint_key
from app.cli.support import fail, print_result, settings_or_exit
from app.database import build_engine, database_url_of
from app.embedded_postgres import EmbeddedDatabaseError
from approvals.audit.retention import (
    DEFAULT_BATCH,
    PurgeSummary,
    count_kept,
    purge_batch,
    purge_boundary,
)
from approvals.errors import DomainError


@click.group()
def retention() -> None:
    """Retention of approval records and their audit trail."""


@retention.command("purge")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option(
    "--batch",
    default=DEFAULT_BATCH,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Requests per transaction (each batch gets its own signed purge record).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def retention_purge(dry_run: bool, batch: int, as_json: bool) -> None:
    """Remove final requests, with their records and audit chains, older than APPROVALS_RETENTION_DAYS.

    Only whole request chains whose every event is older than the boundary and already under a
    signed checkpoint; never a pending request. `approvals audit verify` still passes afterwards.
    """
    settings = settings_or_exit()
    try:
        key = load_checkpoint_key(settings)
    except CheckpointKeyError as exc:
        fail(f"error: {exc}")
    days = settings.retention_days
    actor = f"cli:{operator_identity()}"

    async def run() -> PurgeSummary:
        engine = build_engine(database_url_of(settings))
        try:
            await prepare_database(engine, settings)
            async with engine.begin() as conn:
                boundary = await purge_boundary(conn, dt.timedelta(days=days))
            summary = PurgeSummary(boundary=boundary, retention_days=days, dry_run=dry_run)
            after: str | None = None
            while True:
                # One transaction per batch: a dry run writes nothing, so its commit is empty.
                async with engine.begin() as conn:
                    done = await purge_batch(
                        conn,
                        boundary=boundary,
                        retention_days=days,
                        sign=key.sign,
                        verify=key.verify,
                        key_id=key.key_id,
                        actor=actor,
                        after=after,
                        limit=batch,
                        dry_run=dry_run,
                    )
                summary.add(done)
                if done.candidates < batch or done.next_after is None:
                    break
                after = done.next_after
            async with engine.connect() as conn:
                remaining = await count_kept(conn, boundary)
            # In a dry run nothing went, so what would go is still counted among the old ones.
            summary.kept = remaining - (summary.rows.get("requests", 0) if dry_run else 0)
            return summary
        finally:
            await engine.dispose()

    try:
        summary = asyncio.run(run())
    except (StartupError, EmbeddedDatabaseError) as exc:
        fail(f"error: {exc}")
    except DomainError as exc:
        fail(f"error: {exc.message}", 1)
    print_result(summary.as_dict(), as_json, _text(summary))
    if summary.broken:
        sys.exit(1)


def _text(s: PurgeSummary) -> str:
    verb = "would purge" if s.dry_run else "purged"
    report = s.as_dict()
    lines = [
        f"{verb} {report['requests']} requests ({s.chains} audit chains, {s.events} events) "
        f"final before {report['boundary']} (APPROVALS_RETENTION_DAYS={s.retention_days})"
    ]
    if s.rows:
        lines.append("  rows: " + ", ".join(f"{table} {count}" for table, count in report["rows"].items()))
    if s.purges:
        lines.append(
            f"  signed purge records: {', '.join(map(str, s.purges))} (events in the 'retention' audit chain)"
        )
    if s.kept:
        lines.append(
            f"  kept: {s.kept} older final requests (not yet under a signed checkpoint, a delivery or "
            "click still in flight, a younger event, or a chain that does not verify)"
        )
    if s.broken:
        lines.append(
            f"  WARNING: {len(s.broken)} chains do not verify and were kept as evidence: "
            + ", ".join(s.broken[:10])
            + (" …" if len(s.broken) > 10 else "")
            + " (run `approvals audit verify`)"
        )
    return "\n".join(lines)
