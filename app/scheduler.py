"""Background sweeps on APScheduler: each replica runs its own; the database decides who acts on a row."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.container import Container
from app.witnesses import remote_witness_kinds
from approvals.audit.checkpoints import create_checkpoint
from approvals.audit.witnessing import queue_publication
from approvals.requests.reminders import send_due_reminders
from approvals.requests.use_cases import expire_due_requests, purge_idempotency_keys

log = structlog.get_logger("approvals.scheduler")


EXPIRY_BATCH = 500
# Batches in flight at once: while one waits on the database, the next is prepared here (SKIP LOCKED
# hands each its own rows, as it does for replicas).
EXPIRY_BATCHES_AT_ONCE = 2


async def expire_requests_job(container: Container) -> int:
    """Expire due requests in batches until none are left; wake their long-pollers."""

    async def batches() -> int:
        done = 0
        while True:
            async with container.engine.begin() as conn:
                expired = await expire_due_requests(conn, limit=EXPIRY_BATCH)
            for request_id in expired:
                container.committed(request_id)
            done += len(expired)
            container.metrics.requests_expired.inc(len(expired))
            if len(expired) < EXPIRY_BATCH:
                return done

    async with asyncio.TaskGroup() as group:  # one failing stops the other: the next tick starts over
        runs = [group.create_task(batches()) for _ in range(EXPIRY_BATCHES_AT_ONCE)]
    total = sum(run.result() for run in runs)
    if total:
        log.info("requests_expired", count=total)
    return total


async def dispatch_outbox_job(container: Container) -> int:
    """Deliver what is due: other replicas' rows, retries, and rows whose process died mid-delivery."""
    return await container.dispatcher.run_until_idle()


async def stranded_clicks_job(container: Container) -> int:
    """Decide clicks that were acknowledged but never decided (their process died in between)."""
    return 0 if container.slack is None else await container.slack.clicks.process_stranded()


async def reminders_job(container: Container) -> int:
    """Queue due reminders and escalations (delivered by the outbox, so only once each)."""
    async with container.engine.begin() as conn:
        steps = await send_due_reminders(conn)
    if steps:
        container.dispatcher.kick()
    return steps


async def checkpoint_job(container: Container) -> int:
    """Sign what the log gained since the last checkpoint (one replica wins; the rest find nothing new)."""
    key = container.checkpoint_key
    kinds = remote_witness_kinds(container.settings)
    async with container.engine.begin() as conn:
        interval = dt.timedelta(seconds=container.settings.checkpoint_interval_seconds)
        # A heartbeat when nothing is new: verification reports a gap where checkpoints are missing.
        row = await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, interval=interval)
        if row is not None:
            await queue_publication(conn, row, kinds)
    if row is not None:
        log.info("audit_checkpoint", number=row["number"], events=row["event_count"])
        if kinds:
            container.dispatcher.kick(frozenset(kinds))
    if container.witness_file is not None:
        # Every tick, not only after our own checkpoint: other replicas write them too.
        await container.witness_file.catch_up(container.engine)
    return 0 if row is None else 1


async def purge_idempotency_keys_job(container: Container) -> int:
    keep = dt.timedelta(hours=container.settings.idempotency_retention_hours)
    async with container.engine.begin() as conn:
        return await purge_idempotency_keys(conn, keep=keep)


def guarded(
    name: str, job: Callable[[Container], Awaitable[int]], container: Container
) -> Callable[[], Awaitable[None]]:
    """The job as the scheduler runs it: a failure is logged with its traceback, a cancellation is not."""

    async def run() -> None:
        # A failed sweep (database restarting, say) is logged and simply tried again next tick.
        try:
            await job(container)
        except asyncio.CancelledError:
            # Shutdown cancels a sweep still running. Not an error: its transaction rolls back and
            # whatever it had claimed is claimed again by the next sweep (here after a restart, or on
            # another replica). Ending normally here keeps APScheduler from logging it as a crash;
            # this coroutine is the job's outermost frame, so nothing above it needs the cancellation.
            log.info("job_cancelled", job=name)
        except Exception:
            log.exception("job_failed", job=name)

    return run


def build_scheduler(container: Container) -> AsyncIOScheduler:
    """Interval jobs, each an idempotent database sweep; start() it inside the running loop."""
    scheduler = AsyncIOScheduler(timezone=dt.UTC)
    interval = container.settings.scheduler_interval_seconds
    defaults = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        guarded("expire_requests", expire_requests_job, container),
        "interval",
        seconds=interval,
        id="expire_requests",
        **defaults,
    )
    scheduler.add_job(
        guarded("dispatch_outbox", dispatch_outbox_job, container),
        "interval",
        seconds=interval,
        id="dispatch_outbox",
        **defaults,
    )
    scheduler.add_job(
        guarded("stranded_clicks", stranded_clicks_job, container),
        "interval",
        seconds=max(interval, 2.0),
        id="stranded_clicks",
        **defaults,
    )
    scheduler.add_job(
        guarded("reminders", reminders_job, container),
        "interval",
        seconds=max(interval, 5.0),
        id="reminders",
        **defaults,
    )
    scheduler.add_job(
        guarded("audit_checkpoint", checkpoint_job, container),
        "interval",
        seconds=container.settings.checkpoint_interval_seconds,
        id="audit_checkpoint",
        **defaults,
    )
    scheduler.add_job(
        guarded("purge_idempotency_keys", purge_idempotency_keys_job, container),
        "interval",
        hours=1,
        id="purge_idempotency_keys",
        **defaults,
    )
    return scheduler
