"""Publishing checkpoints to witnesses outside the database, and reading them back for `audit verify`.

Three witnesses (approvals.audit.witnessing holds the record and the check):
- a JSON Lines file, append-only and fsynced, on by default beside the checkpoint key. Each process
  brings its own file up to date after every checkpoint job, from the database: a record is appended
  only while the file's newest record is still in the database unchanged, so a rolled-back log is never
  written over, and a process that was down catches up;
- an HTTP endpoint: each checkpoint POSTed as JSON, signed per Standard Webhooks like agent callbacks,
  through the outbox (retried for a day; the receiver drops repeats by `webhook-id`);
- a Slack channel: each checkpoint's record in a message, through the outbox; verify reads the
  channel's history back.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from app.config import Settings
from app.delivery.webhooks import deliver, next_retry_delay
from app.dispatcher import Settlement
from app.ssrf import CallbackAllowList
from approvals.audit.checkpoints import Verifier
from approvals.audit.events import canonical_text
from approvals.audit.witnessing import (
    RECORD_TYPE,
    WITNESS_HTTP,
    WITNESS_SLACK,
    WitnessCheck,
    WitnessRecordError,
    check_witnessed,
    parse_record,
    witness_record,
)
from approvals.delivery.outbox import Claimed
from approvals.tables import audit_checkpoints

if TYPE_CHECKING:  # slack_sdk is imported where Slack is used: the CLI starts without it
    from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger("approvals.witnesses")

SLACK_MARKER = "approvals audit checkpoint"
HTTP_EVENT_TYPE = "audit.checkpoint"


def redacted_url(url: str) -> str:
    """Scheme, host and port only: a witness URL's path or query may carry a token."""
    parsed = URL(url)
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def remote_witness_kinds(settings: Settings) -> list[str]:
    """The outbox kinds a new checkpoint is queued for, as configured."""
    kinds = []
    if settings.checkpoint_witness_url:
        kinds.append(WITNESS_HTTP)
    if settings.checkpoint_witness_slack_channel:
        kinds.append(WITNESS_SLACK)
    return kinds


class WitnessFile:
    """An append-only JSON Lines file of checkpoint records."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """Every record, in file order; WitnessRecordError names the first line that is not one.

        A last line without its newline is a write cut short by a crash, and is not counted."""
        records = []
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    break
                if not raw.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    value = json.loads(raw)
                except ValueError:
                    raise WitnessRecordError(f"{where}: not JSON") from None
                if isinstance(value, dict) and value.get("type") == HTTP_EVENT_TYPE:
                    value = value.get("data")  # kept as the HTTP witness received it
                records.append(parse_record(value, where))
        return records

    def _last_record(self) -> dict[str, Any] | None:
        """The newest whole record, read from the end (a year's file is tens of megabytes)."""
        if not self.path.exists():
            return None
        with self.path.open("rb") as handle:
            position, tail = handle.seek(0, os.SEEK_END), b""
            while True:
                step = min(65536, position)
                position -= step
                handle.seek(position)
                tail = handle.read(step) + tail
                # Only lines that end in a newline are whole; the first one read may have begun
                # before this chunk, unless the chunk reaches the start of the file.
                lines = [line for line in tail[: tail.rfind(b"\n") + 1].split(b"\n") if line.strip()]
                if position > 0:
                    lines = lines[1:]
                if lines:
                    where = f"{self.path} (last record)"
                    try:
                        return parse_record(json.loads(lines[-1]), where)
                    except ValueError:
                        raise WitnessRecordError(f"{where}: not JSON") from None
                if position == 0:
                    return None

    def _lock(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _lock(self.path.with_name(self.path.name + ".lock"))

    def _append(self, lines: list[str]) -> None:
        self._drop_torn_tail()
        # Append mode is O_APPEND: every write lands at the end, whoever else has the file open.
        with open(self.path, "a", encoding="utf-8", opener=_private) as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    def _drop_torn_tail(self) -> None:
        """Cut a last line left without its newline by a crash or a full disk (called under the lock).

        It was never a record (read() skips it), and writing after it would glue the next record to
        it; the record it was is appended again from the database."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            position = size
            while position > 0:
                step = min(65536, position)
                position -= step
                handle.seek(position)
                newline = handle.read(step).rfind(b"\n")
                if newline != -1:
                    handle.truncate(position + newline + 1)
                    break
            else:
                handle.truncate(0)
            handle.flush()
            os.fsync(handle.fileno())
        log.warning("witness_file_torn_line_dropped", path=str(self.path))

    async def catch_up(self, engine: AsyncEngine) -> int:
        """Append every checkpoint the file does not hold yet; how many were appended.

        Replicas on one host may share the file: an exclusive lock on a lock file beside it makes
        their catch-ups take turns. If the file's newest record is not in the database as written, the
        database was rolled back or rewritten: nothing is appended and the error is logged.
        """
        try:
            return await self._catch_up(engine)
        except OSError as exc:
            # A read-only or full disk: the checkpoint itself is safe in the database (and with the
            # other witnesses); say so plainly rather than as a failed job.
            log.error("witness_file_unwritable", path=str(self.path), error=f"{type(exc).__name__}: {exc}")
            return 0

    async def _catch_up(self, engine: AsyncEngine) -> int:
        lock = await asyncio.to_thread(self._lock)
        try:
            last = await asyncio.to_thread(self._last_record)
            after = int(last["number"]) if last else 0
            async with engine.connect() as conn:
                if last is not None:
                    stored = (
                        (
                            await conn.execute(
                                select(audit_checkpoints).where(audit_checkpoints.c.number == after)
                            )
                        )
                        .mappings()
                        .first()
                    )
                    if stored is None or witness_record(stored) != last:
                        log.error(
                            "witness_file_mismatch",
                            path=str(self.path),
                            checkpoint=after,
                            detail="the database no longer holds the newest witnessed checkpoint as "
                            "witnessed: run `approvals audit verify`; if the database was reset on purpose, "
                            "move the witness file aside",
                        )
                        return 0
                rows = (
                    await conn.execute(
                        select(audit_checkpoints)
                        .where(audit_checkpoints.c.number > after)
                        .order_by(audit_checkpoints.c.number)
                    )
                ).mappings()
                lines = [canonical_text(witness_record(row)) for row in rows]
            if lines:
                await asyncio.to_thread(self._append, lines)
            return len(lines)
        finally:
            await asyncio.to_thread(_unlock, lock)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class HttpWitness:
    """The outbox handler for `witness_http` rows: POST the record, signed like a callback."""

    def __init__(self, *, url: str, secret: str) -> None:
        self._url = url
        self._shown = redacted_url(url)  # what logs and delivery records say
        self._secret = secret
        # The operator named this endpoint: it may be on a private network, so its host is allowed.
        host = URL(url).host or ""
        self._allow = CallbackAllowList.parse([host])

    async def deliver(self, item: Claimed) -> Settlement:
        record = item.payload["record"]
        body = canonical_text({"type": HTTP_EVENT_TYPE, "data": record}).encode()
        result = await deliver(
            url=self._url,
            body=body,
            msg_id="msg_" + hashlib.sha256(item.dedupe_key.encode()).hexdigest()[:32],
            secret=self._secret,
            allow=self._allow,
            timestamp=int(time.time()),
        )
        error = result.error.replace(self._url, self._shown) if result.error else None
        common: dict[str, Any] = {"status_code": result.status_code, "target": self._shown, "error": error}
        if result.result == "delivered":
            return Settlement("delivered", **common)
        if result.result in ("failed", "gone"):
            log.error("witness_http_failed", checkpoint=record.get("number"), **common)
            return Settlement("failed", **common)
        delay = next_retry_delay(item.attempt, retry_after=result.retry_after)
        if delay is None:
            log.error("witness_http_gave_up", checkpoint=record.get("number"), **common)
            return Settlement("failed", **{**common, "error": f"gave up after {item.attempt} attempts"})
        return Settlement("retry", retry_in=delay, **common)


def slack_text(record: dict[str, Any]) -> str:
    """The message: a line for people, then the record itself for `audit verify` to read back."""
    return (
        f"{SLACK_MARKER} {record['number']}: {record['total_events']} events, "
        f"running hash {record['running_hash'][:16]}…\n```{canonical_text(record)}```"
    )


def record_from_slack_text(text: str, where: str) -> dict[str, Any] | None:
    """The record in one of our messages; None for any other message in the channel."""
    if not text.startswith(SLACK_MARKER) or "```" not in text:
        return None
    body = text.split("```", 2)[1]
    # Slack escapes these three in message text; the record itself never contains them.
    body = body.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    try:
        value = json.loads(body)
    except ValueError:
        raise WitnessRecordError(f"{where}: not JSON") from None
    if not isinstance(value, dict) or value.get("type") != RECORD_TYPE:
        return None
    return parse_record(value, where)


class SlackWitness:
    """The outbox handler for `witness_slack` rows: the record in a message to the channel."""

    def __init__(self, *, client: AsyncWebClient, channel: str) -> None:
        self._client = client
        self._channel = channel

    async def deliver(self, item: Claimed) -> Settlement:
        from slack_sdk.errors import SlackApiError

        from app.slack.delivery import classify

        record = item.payload["record"]
        try:
            await self._client.chat_postMessage(
                channel=self._channel, text=slack_text(record), unfurl_links=False, unfurl_media=False
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = classify(exc, item.attempt)
            if outcome.result == "failed":
                log.error("witness_slack_failed", checkpoint=record.get("number"), error=outcome.error)
            return outcome
        return Settlement("delivered", target=self._channel)


async def read_slack_witness(client: AsyncWebClient, channel: str) -> list[dict[str, Any]]:
    """Every checkpoint record the bot posted in the channel (its whole history, newest first from Slack).

    Only the bot's own messages count: anyone in the channel could post text that looks like a record,
    and a junk one would make verification fail."""
    me = await client.auth_test()
    ours = {value for value in (me.get("user_id"), me.get("bot_id")) if value}
    records = []
    async for message in _history(client, channel):
        if message.get("user") not in ours and message.get("bot_id") not in ours:
            continue
        where = f"Slack channel {channel}, message {message.get('ts')}"
        record = record_from_slack_text(str(message.get("text") or ""), where)
        if record is not None:
            records.append(record)
    return records


async def _history(client: AsyncWebClient, channel: str) -> AsyncIterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        # 999 a page, Slack's most: a year of checkpoints is about 105,000 messages.
        response = await client.conversations_history(channel=channel, limit=999, cursor=cursor)
        for message in response.get("messages") or []:
            yield message
        cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            return


@dataclass(frozen=True)
class WitnessResult:
    """One witness as `audit verify` checked it: its check, or why it could not be read."""

    source: str
    check: WitnessCheck | None = None
    error: str | None = None  # it could not be read: a failure when the witness was asked for
    note: str | None = None  # nothing to check here (a witness that cannot be read back, say)

    @property
    def ok(self) -> bool:
        return self.error is None and (self.check is None or self.check.problem is None)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "ok": self.ok}
        if self.check is not None:
            out |= {"records": self.check.records, "newest": self.check.newest}
            if self.check.problem is not None:
                out["problem"] = {"number": self.check.problem.number, "problem": self.check.problem.problem}
        if self.error is not None:
            out["error"] = self.error
        if self.note is not None:
            out["note"] = self.note
        return out


async def check_witnesses(
    engine: AsyncEngine,
    settings: Settings,
    *,
    verify: Verifier,
    files: list[Path],
    slack_channels: list[str],
    configured: bool = True,
) -> list[WitnessResult]:
    """Check the witnesses named (`files`, `slack_channels`) and, with `configured`, those in the settings.

    A configured witness file that does not exist here is a note, not a failure (`audit verify` may run
    on another machine than the service); one named on the command line must be there.
    """
    wanted: list[tuple[str, str, bool]] = [("file", str(path), True) for path in files]
    wanted += [("slack", channel, True) for channel in slack_channels]
    results: list[WitnessResult] = []
    if configured:
        path = settings.witness_file_path
        if path is not None and str(path) not in {w[1] for w in wanted if w[0] == "file"}:
            wanted.append(("file", str(path), False))
        channel = settings.checkpoint_witness_slack_channel
        if channel and channel not in slack_channels:
            wanted.append(("slack", channel, True))
        if settings.checkpoint_witness_url:
            results.append(
                WitnessResult(
                    f"HTTP {redacted_url(settings.checkpoint_witness_url)}",
                    note="its copy is kept by the receiver: check it with --witness FILE (JSON Lines)",
                )
            )
    for kind, name, required in wanted:
        if kind == "file":
            results.append(await _check_file(engine, Path(name), required, verify))
        else:
            results.append(await _check_slack(engine, settings, name, verify))
    return results


async def _check_file(engine: AsyncEngine, path: Path, required: bool, verify: Verifier) -> WitnessResult:
    source = f"file {path}"
    if not await asyncio.to_thread(path.exists):
        message = f"no witness file at {path}"
        if required:
            return WitnessResult(source, error=message)
        return WitnessResult(source, note=message + " (the service writes it where it runs)")
    try:
        records = await asyncio.to_thread(WitnessFile(path).read)
    except (OSError, WitnessRecordError) as exc:
        return WitnessResult(source, error=str(exc))
    async with engine.connect() as conn:
        return WitnessResult(source, check=await check_witnessed(conn, source, records, verify=verify))


async def _check_slack(
    engine: AsyncEngine, settings: Settings, channel: str, verify: Verifier
) -> WitnessResult:
    from slack_sdk.errors import SlackApiError
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    source = f"Slack channel {channel}"
    if settings.slack_bot_token is None:
        return WitnessResult(source, error="SLACK_BOT_TOKEN is not set: the channel cannot be read")
    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=30
    )
    # conversations.history is Tier 3 (about 50 calls a minute): wait out a 429 as Slack asks.
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=10))
    try:
        records = await read_slack_witness(client, channel)
    except SlackApiError as exc:
        return WitnessResult(
            source, error=f"Slack answered {exc.response.get('error') or exc.response.status_code}"
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return WitnessResult(source, error=f"Slack could not be reached: {type(exc).__name__}: {exc}")
    except WitnessRecordError as exc:
        return WitnessResult(source, error=str(exc))
    finally:
        if client.session is not None and not client.session.closed:
            await client.session.close()
    async with engine.connect() as conn:
        return WitnessResult(source, check=await check_witnessed(conn, source, records, verify=verify))
