"""Checkpoint witnesses: copies of each signed checkpoint kept outside the database.

A checkpoint proves what the log held when it was signed, but only while it is still in the database:
an operator who can write the database (and sign with the key) could roll the log back to an older
checkpoint and go on from there. A witness is a copy that such an operator cannot take back: an
append-only file, an HTTP endpoint, a Slack channel. This module holds what is the same for all of
them: the record a witness keeps (the checkpoint's signed fields and its signature; a few hundred
bytes), the outbox rows that publish it to the remote witnesses in the checkpoint's own transaction,
and the check that the database still holds every witnessed checkpoint unchanged. Because the
checkpoints in the database are verified as one chain (each continues from the one before, over
every event), a database that holds every witnessed checkpoint also extends each of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.checkpoints import SCHEME_STEPWISE, Verifier, checkpoint_body
from approvals.audit.events import format_time
from approvals.db import db_now
from approvals.delivery.outbox import enqueue_many, outbox_row
from approvals.tables import audit_checkpoints

RECORD_TYPE = "approvals.audit_checkpoint"
WITNESS_HTTP = "witness_http"
WITNESS_SLACK = "witness_slack"
WITNESS_KINDS = (WITNESS_HTTP, WITNESS_SLACK)
# The fields of a checkpoint a witness keeps and compares; the signature covers all the others.
RECORD_FIELDS = (
    "number",
    "created_at",
    "first_event_id",
    "last_event_id",
    "event_count",
    "total_events",
    "running_hash",
    "key_id",
    "scheme",
    "signature",
)


class WitnessRecordError(ValueError):
    """A witness's copy is not a checkpoint record (it names where, e.g. the file's line)."""


def witness_record(row: Any) -> dict[str, Any]:
    """What a witness keeps of a checkpoint row: JSON-ready, with a type so it can be told apart."""
    return {
        "type": RECORD_TYPE,
        "number": int(row["number"]),
        "created_at": format_time(row["created_at"]),
        "first_event_id": int(row["first_event_id"]),
        "last_event_id": int(row["last_event_id"]),
        "event_count": int(row["event_count"]),
        "total_events": int(row["total_events"]),
        "running_hash": str(row["running_hash"]),
        "key_id": str(row["key_id"]),
        "scheme": int(row.get("scheme") or SCHEME_STEPWISE),
        "signature": str(row["signature"]),
    }


def parse_record(value: Any, where: str) -> dict[str, Any]:
    """A record read back from a witness, checked for shape (its content is checked against the log)."""
    if not isinstance(value, dict) or value.get("type") != RECORD_TYPE:
        raise WitnessRecordError(f"{where}: not a checkpoint record")
    record: dict[str, Any] = {"type": RECORD_TYPE}
    for name in RECORD_FIELDS:
        field = value.get(name)
        text_field = name in ("created_at", "running_hash", "key_id", "signature")
        if text_field and not isinstance(field, str):
            raise WitnessRecordError(f"{where}: {name} is missing or not a string")
        if not text_field and (not isinstance(field, int) or isinstance(field, bool)):
            raise WitnessRecordError(f"{where}: {name} is missing or not a whole number")
        record[name] = field
    try:
        dt.datetime.fromisoformat(record["created_at"])
    except ValueError:
        raise WitnessRecordError(f"{where}: created_at is not a time") from None
    return record


def record_signature_valid(record: dict[str, Any], verify: Verifier) -> bool:
    """Whether the record carries the service key's signature over its fields."""
    row = {**record, "created_at": dt.datetime.fromisoformat(record["created_at"])}
    return verify(checkpoint_body(row), record["signature"])


async def queue_publication(conn: AsyncConnection, row: Any, kinds: Iterable[str]) -> None:
    """Queue the checkpoint for each remote witness in the caller's transaction: it is published
    (with retries, by the outbox) exactly when the checkpoint itself commits."""
    record = witness_record(row)
    now = await db_now(conn)
    await enqueue_many(
        conn,
        [
            outbox_row(
                kind=kind,
                dedupe_key=f"checkpoint:{record['number']}:{kind}",
                request_id=None,
                payload={"record": record},
                now=now,
            )
            for kind in kinds
        ],
    )


@dataclass(frozen=True)
class WitnessProblem:
    """The first witnessed checkpoint the database does not hold as witnessed."""

    source: str
    number: int
    problem: str


@dataclass(frozen=True)
class WitnessCheck:
    source: str
    records: int  # distinct checkpoints the witness holds
    newest: int | None  # the newest witnessed checkpoint's number
    problem: WitnessProblem | None


async def check_witnessed(
    conn: AsyncConnection, source: str, records: list[dict[str, Any]], *, verify: Verifier
) -> WitnessCheck:
    """Every record a witness holds must be in the database unchanged; the first that is not is named.

    A record that differs and that the service's key did not sign is reported as such (the witness's
    copy was altered or is not ours), so that a tampered copy is not mistaken for a rolled-back log. A
    record identical to the database's is not verified again: verify_checkpoints checks that copy.
    """
    by_number: dict[int, dict[str, Any]] = {}
    for record in records:
        number = int(record["number"])
        if number in by_number and by_number[number] != record:
            return WitnessCheck(
                source,
                len(by_number),
                None,
                WitnessProblem(source, number, "the witness holds two different records of this checkpoint"),
            )
        by_number[number] = record
    newest = max(by_number) if by_number else None
    if newest is None:
        return WitnessCheck(source, 0, None, None)
    # A range, not an IN list: a year's witness holds about 100,000 records.
    stored = {
        int(row["number"]): witness_record(row)
        for row in (
            await conn.execute(
                select(audit_checkpoints).where(
                    audit_checkpoints.c.number >= min(by_number), audit_checkpoints.c.number <= newest
                )
            )
        ).mappings()
    }
    for number in sorted(by_number):
        record = by_number[number]
        if stored.get(number) == record:
            continue  # the database's copy, whose signature verify_checkpoints checks
        if not record_signature_valid(record, verify):
            problem = "the witness's record does not carry this service's signature (altered copy?)"
        elif number not in stored:
            problem = "witnessed, but no longer in the database (the log was rolled back or cut)"
        else:
            changed = sorted(k for k in RECORD_FIELDS if stored[number].get(k) != record.get(k))
            problem = (
                "the database's checkpoint differs from the witnessed one "
                f"({', '.join(changed)}): the log was rewritten after it was witnessed"
            )
        return WitnessCheck(source, len(by_number), newest, WitnessProblem(source, number, problem))
    return WitnessCheck(source, len(by_number), newest, None)
