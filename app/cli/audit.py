"""`approvals audit ...` and `approvals keys ...`: verification, exports and auditor keys."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit_report import count, render_report
from app.chain_formats import (
    CSV_COLUMNS,
    FORMATS,
    chain_filter,
    compact_json,
    csv_row,
    csv_text,
    parse_time,
)
from app.checkpoint_keys import CheckpointKey, CheckpointKeyError, load_checkpoint_key
from app.cli.support import fail, in_transaction, print_result, settings_or_exit, with_engine
from app.database import build_engine, database_url_of
from app.embedded_postgres import EmbeddedDatabaseError
from approvals.audit.chain_json import iter_chain_texts
from approvals.audit.chains import count_chains, iter_chains
from approvals.audit.checkpoints import create_checkpoint, latest_checkpoint
from approvals.audit.queries import events_of_kind
from approvals.audit.report_figures import (
    REPORT_STEPS,
    SAMPLE_SIZE,
    ReportData,
    gather_report,
    read_only_snapshot,
)
from approvals.audit.verification import VERIFY_STEPS, Finding, LogVerdict, Progress, verify_audit_log
from approvals.errors import DomainError
from approvals.identity.auditors import NewKey, add_auditor_key
from approvals.requests.lifecycle import STATUSES

if TYPE_CHECKING:  # imported where verify runs: it brings the HTTP and Slack clients
    from app.witnesses import WitnessResult


@click.group()
def audit() -> None:
    """Verify the audit log and export approval chains."""


def _key() -> CheckpointKey:
    try:
        return load_checkpoint_key(settings_or_exit())
    except CheckpointKeyError as exc:
        fail(f"error: {exc}")


def _on_terminal() -> bool:
    """Progress is drawn only on a terminal: in a log or a pipe, a redrawn bar is noise, and the
    command's last line says what was done."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def _steps(label: str, total: int) -> Iterator[Progress]:
    """A progress bar on stderr (a terminal only) that advances a step at each call of the callable it
    gives, naming what was just done beside the bar."""
    latest: list[str] = []

    def shown(_position: int | None) -> str | None:
        return latest[-1] if latest else None

    with click.progressbar(
        length=total,
        label=label,
        file=sys.stderr,
        hidden=not _on_terminal(),
        show_pos=True,
        show_eta=False,
        item_show_func=shown,
    ) as bar:

        def advance(done: str) -> None:
            latest.append(done)
            bar.update(1)

        yield advance


@audit.command("verify")
@click.option(
    "--checkpoint",
    "exported_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A checkpoint exported earlier (kept outside the database) that must still match.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Recompute every hash in this process instead of letting PostgreSQL hash the log where it lies.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on every finding, a gap between checkpoints or an old newest checkpoint included.",
)
@click.option(
    "--as-of",
    "as_of_text",
    metavar="TIME",
    help="Judge the newest checkpoint's age as of this ISO 8601 time instead of now (a log verified "
    "after its service stopped).",
)
@click.option(
    "--since",
    "since_text",
    metavar="TIME",
    help="Report gaps between checkpoints only from this ISO 8601 time on, e.g. when this version (with "
    "heartbeat checkpoints) was installed: before it, an idle log wrote none.",
)
@click.option(
    "--witness",
    "witness_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="A copy of the witnessed checkpoints (JSON Lines) the database must still hold, such as one an "
    "auditor kept or an HTTP witness received. Repeatable; the configured witnesses are checked anyway.",
)
@click.option(
    "--witness-slack",
    "witness_channels",
    multiple=True,
    metavar="CHANNEL",
    help="A Slack channel (ID) checkpoints were posted to, read with SLACK_BOT_TOKEN. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def audit_verify(
    exported_file: Path | None,
    in_process: bool,
    strict: bool,
    as_of_text: str | None,
    since_text: str | None,
    witness_files: tuple[Path, ...],
    witness_channels: tuple[str, ...],
    as_json: bool,
) -> None:
    """Recompute every hash chain and signed checkpoint, compare the request rows with their chains,
    check the checkpoint witnesses, and report the checkpoints' age and gaps; name the first broken
    link (exit 1 if anything fails)."""
    from app.witnesses import check_witnesses

    settings = settings_or_exit()
    key = _key()
    try:
        as_of = parse_time(as_of_text, "--as-of")
        since = parse_time(since_text, "--since")
    except DomainError as exc:
        fail(f"error: {exc.message}")
    exported = json.loads(exported_file.read_text()) if exported_file else None
    if exported is not None and exported.get("public_key") != key.public_b64:
        fail("error: the exported checkpoint was signed by another key than the configured one", 1)
    interval = dt.timedelta(seconds=settings.checkpoint_interval_seconds)

    async def work(engine: AsyncEngine, progress: Progress) -> tuple[LogVerdict, list[WitnessResult]]:
        verdict = await verify_audit_log(
            engine,
            verify=key.verify,
            exported=exported,
            hash_in_database=not in_process,
            interval=interval,
            as_of=as_of,
            gaps_since=since,
            progress=progress,
        )
        witnesses = await check_witnesses(
            engine,
            settings,
            verify=key.verify,
            files=list(witness_files),
            slack_channels=list(witness_channels),
        )
        progress(f"witnesses: {len(witnesses)} checked")
        return verdict, witnesses

    started = time.monotonic()
    # The log's own checks, then the witnesses.
    with _steps("verifying", len(VERIFY_STEPS) + 1) as progress:
        verdict, witnesses = with_engine(lambda engine: work(engine, progress))
    # Every check beyond the log's own adds its findings here; the verdict weighs them all alike.
    findings = list(verdict.findings) + [_witness_finding(w) for w in witnesses if not w.ok]
    ok = verdict.passes(strict=strict, findings=findings)
    _print_verdict(verdict, findings, witnesses, ok=ok, strict=strict, as_json=as_json)
    # stdout carries the verdict (as JSON, perhaps, for a program): the last line, for a person
    # watching, goes to stderr, always.
    warnings = sum(1 for f in findings if not f.fails_when(strict))
    click.echo(
        f"verified {count(verdict.chains.chains, 'chain')}, {count(verdict.chains.events, 'event')}, "
        f"{count(verdict.checkpoints, 'checkpoint')}, {count(verdict.requests, 'request row')} and "
        f"{len(witnesses)} {'witness' if len(witnesses) == 1 else 'witnesses'} "
        f"in {time.monotonic() - started:.1f} s: {'OK' if ok else 'FAILED'}"
        + (f", {count(warnings, 'warning')}" if warnings else ""),
        err=True,
    )
    if not ok:
        sys.exit(1)


def _witness_finding(witness: WitnessResult) -> Finding:
    """A witness the database does not agree with (or that could not be read) fails verification."""
    problem = witness.check.problem if witness.check is not None else None
    if problem is not None:
        return Finding(
            "witness_mismatch",
            f"{witness.source}: checkpoint {problem.number}: {problem.problem}",
            fails=True,
            checkpoint=problem.number,
        )
    return Finding("witness_unreadable", f"{witness.source}: {witness.error}", fails=True)


def _witness_line(witness: WitnessResult) -> str:
    if witness.note is not None:
        return f"witness {witness.source}: {witness.note}"
    if witness.check is not None and witness.check.problem is None:
        newest = f", newest {witness.check.newest}" if witness.check.newest is not None else ""
        return (
            f"witness {witness.source}: {witness.check.records} checkpoints{newest}, all held by the database"
        )
    return f"witness {witness.source}: see FAILED below"


def _print_verdict(
    verdict: LogVerdict,
    findings: list[Finding],
    witnesses: list[WitnessResult],
    *,
    ok: bool,
    strict: bool,
    as_json: bool,
) -> None:
    """The verdict as JSON, or as a headline (OK, or the first thing that fails) and one line a finding."""
    report, checkpoints, problem = verdict.chains, verdict.checkpoints, verdict.checkpoint_problem
    brk = report.first_break
    failing = [f for f in findings if f.fails_when(strict)]
    result: dict[str, Any] = {
        "ok": ok,
        "strict": strict,
        "chains": report.chains,
        "events": report.events,
        "checkpoints": checkpoints,
        "requests": verdict.requests,
        "newest_checkpoint": _newest(verdict),
        "findings": [f.as_dict() for f in findings],
        "witnesses": [w.as_json() for w in witnesses],
    }
    if brk is not None:
        result["first_break"] = {"chain_id": brk.chain_id, "seq": brk.seq, "problem": brk.problem}
    if problem is not None:
        result["checkpoint_problem"] = {"number": problem.number, "problem": problem.problem}
    if brk is not None:
        headline = f"BROKEN: chain {brk.chain_id} at event {brk.seq}: {brk.problem}"
    elif problem is not None:
        headline = f"BROKEN: checkpoint {problem.number}: {problem.problem}"
    elif failing:
        headline = f"BROKEN: {failing[0].message}"
    else:
        headline = (
            f"OK: {report.chains} chains, {report.events} events and {checkpoints} checkpoints verified, "
            f"{verdict.requests} requests agree with their chains"
        )
    lines = [headline]
    newest = result["newest_checkpoint"]
    if newest is not None:
        lines.append(
            f"newest checkpoint: {newest['number']}, {newest['age_seconds']} s old at {newest['as_of']}"
        )
    lines += [_witness_line(w) for w in witnesses]
    for finding in findings:
        if finding.fails_when(strict):
            lines.append(f"FAILED: {finding.message}")
        else:
            lines.append(f"WARNING: {finding.message} (fails with --strict)")
    print_result(result, as_json, "\n".join(lines))


def _newest(verdict: LogVerdict) -> dict[str, Any] | None:
    timeline = verdict.timeline
    if timeline is None or timeline.newest is None or timeline.newest_age is None:
        return None
    return {
        "number": timeline.newest,
        "age_seconds": round(timeline.newest_age.total_seconds()),
        "as_of": timeline.as_of.isoformat(),
    }


@audit.command("checkpoint")
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the latest checkpoint here, to keep outside the database.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def audit_checkpoint(export_file: Path | None, as_json: bool) -> None:
    """Sign everything appended so far into a new checkpoint (a heartbeat if nothing is new); optionally export it.

    The checkpoint goes to the configured witnesses like the scheduler's: the witness file here, the
    HTTP endpoint and Slack channel through the outbox (sent by the running service)."""
    from app.witnesses import WitnessFile, remote_witness_kinds
    from approvals.audit.witnessing import queue_publication

    settings = settings_or_exit()
    key = _key()
    path = settings.witness_file_path

    async def work(engine: AsyncEngine) -> dict[str, Any] | None:
        async with engine.begin() as conn:
            # An interval of 0: a heartbeat (a checkpoint of no events) when nothing is new, so the
            # command always signs a checkpoint of now to export.
            row = await create_checkpoint(
                conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0), interval=dt.timedelta(0)
            )
            if row is not None:
                await queue_publication(conn, row, remote_witness_kinds(settings))
            latest = await latest_checkpoint(conn)
        if path is not None:
            await WitnessFile(path).catch_up(engine)
        return latest

    latest = with_engine(work)
    if latest is None:
        fail("error: the audit log is empty: nothing to checkpoint", 1)
    document = {**latest, "created_at": latest["created_at"].isoformat(), "public_key": key.public_b64}
    if export_file is not None:
        export_file.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print_result(
        document,
        as_json,
        f"checkpoint {latest['number']}: {latest['total_events']} events, "
        f"running hash {latest['running_hash'][:16]}"
        + (f", exported to {export_file}" if export_file else ""),
    )


FILTERS = ("agent", "policy", "action", "approver", "status", "outcome")


@audit.command("export")
@click.option("--agent", help="Only this agent's requests (its name).")
@click.option("--policy", help="Only requests judged by this policy (its name).")
@click.option("--action", help="Only requests for this action.")
@click.option("--approver", help="Slack user id or email of an approver.")
@click.option(
    "--status",
    type=click.Choice([status.value for status in STATUSES]),
    help="Only requests in this state.",
)
@click.option(
    "--outcome",
    type=click.Choice(["succeeded", "failed", "none"]),
    help="Only requests whose agent reported this outcome (none: no outcome reported).",
)
@click.option("--from", "created_from", help="ISO 8601 date or date-time (inclusive).")
@click.option("--to", "created_to", help="ISO 8601 date or date-time (exclusive).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="json: one document; jsonl: one chain per line; csv: one row per chain.",
)
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
        engine = build_engine(url)
        try:
            async with contextlib.AsyncExitStack() as sessions:
                conn = await sessions.enter_async_context(engine.connect())
                population = await count_chains(conn, wanted)
                click.echo(f"population: {population} chains", err=True)
                builders = []
                if fmt != "csv":
                    # Two sessions write pages of JSON while this one finds the next pages.
                    builders = [await sessions.enter_async_context(engine.connect()) for _ in range(2)]
                await _write(conn, builders, stream, fmt, population)
            return population
        finally:
            await engine.dispose()

    async def _write(
        conn: AsyncConnection, builders: list[AsyncConnection], stream: IO[str], fmt: str, population: int
    ) -> None:
        written = 0
        with click.progressbar(
            length=population, label="exporting", file=sys.stderr, hidden=not _on_terminal()
        ) as bar:
            if fmt == "json":
                stream.write(f'{{"population": {population}, "chains": [')
            elif fmt == "csv":
                stream.write(csv_text([CSV_COLUMNS]))
            async for chain in _chains(conn, builders, fmt):
                if fmt == "json":
                    stream.write(("," if written else "") + chain)
                elif fmt == "jsonl":
                    stream.write(chain + "\n")
                else:
                    stream.write(chain)
                written += 1
                # On a terminal the bar redraws at each update: every 100 chains is as informative
                # and keeps the redraws (terminal size, formatting, a flush) out of the per-chain cost.
                if written % 100 == 0:
                    bar.update(100)
            bar.update(written % 100)
            if fmt == "json":
                stream.write("]}\n")

    async def _chains(conn: AsyncConnection, builders: list[AsyncConnection], fmt: str) -> AsyncIterator[str]:
        """Each chain's text: JSON written by PostgreSQL itself where it can, else from its dict."""
        if builders:
            async for text in iter_chain_texts(conn, wanted, builders=builders):
                yield text
            return
        async for chain in iter_chains(conn, wanted):
            yield csv_text([csv_row(chain)]) if fmt == "csv" else compact_json(chain)

    try:
        url = database_url_of(settings)
    except EmbeddedDatabaseError as exc:
        fail(f"error: {exc}")
    started = time.monotonic()
    if out is None:
        exported = asyncio.run(run(sys.stdout))
    else:
        with out.open("w", encoding="utf-8", newline="") as handle:
            exported = asyncio.run(run(handle))
    # Always a last line on stderr, whatever stdout is: how many, where, how long.
    where = str(out) if out is not None else "stdout"
    click.echo(
        f"exported {count(exported, 'chain')} as {fmt} to {where} in {time.monotonic() - started:.1f} s",
        err=True,
    )


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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
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


def _report_time(value: str | None, option: str) -> dt.datetime:
    """A required --from/--to: a date (midnight UTC) or an ISO 8601 date-time (UTC unless it says)."""
    if not value:
        fail(f"error: {option} is required: a date (YYYY-MM-DD) or an ISO 8601 date-time")
    try:
        parsed = parse_time(value, option)
    except DomainError:
        fail(f"error: {option} {value!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 date-time")
    assert parsed is not None  # parse_time returns None only for an empty value, handled above
    return parsed


@audit.command("report")
@click.option("--from", "created_from", help="[required] Date (YYYY-MM-DD) or ISO 8601 date-time, inclusive.")
@click.option("--to", "created_to", help="[required] Date (YYYY-MM-DD) or ISO 8601 date-time, exclusive.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="[required] The HTML file to write."
)
@click.option(
    "--sample",
    "sample_size",
    type=click.IntRange(0, 200),
    default=SAMPLE_SIZE,
    show_default=True,
    help="How many chains to show with their full timelines.",
)
def audit_report(
    created_from: str | None, created_to: str | None, out: Path | None, sample_size: int
) -> None:
    """Write a self-contained HTML report on the requests created in [--from, --to) (exit 1 if the log is broken)."""
    # Required options are checked here rather than by click, so a mistake is one line, not a usage block.
    start, end = _report_time(created_from, "--from"), _report_time(created_to, "--to")
    if start >= end:
        fail(f"error: --from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    if out is None:
        fail("error: --out is required: the HTML file to write")
    key = _key()

    async def work(conn: AsyncConnection, progress: Progress) -> ReportData:
        await read_only_snapshot(conn)
        return await gather_report(
            conn, start=start, end=end, verify=key.verify, sample_size=sample_size, progress=progress
        )

    started = time.monotonic()
    # The figures, then the page.
    with _steps("reporting", len(REPORT_STEPS) + 1) as progress:
        data = in_transaction(lambda conn: work(conn, progress))
        page = render_report(data)
        progress("page rendered")
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"error: cannot write {out}: {exc.strerror}", 1)
    verification = data.verification
    # stdout carries no data here (the file does): the last line goes there.
    click.echo(
        f"report written to {out} in {time.monotonic() - started:.1f} s: "
        f"{count(data.population, 'request')}, {count(len(data.sample), 'sample chain')}; "
        f"verification {verification.summary}"
    )
    if not verification.ok:
        sys.exit(1)


@click.group()
def keys() -> None:
    """API keys for people and tools other than agents."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["auditor"]),
    required=True,
    help="What the key may do (auditor: read compliance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
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
