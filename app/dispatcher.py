"""The outbox dispatcher: leases due deliveries, runs them outside any transaction, records each attempt.

Kicked right after a commit in this process (so a card goes out in milliseconds) and swept by the
scheduler (for other replicas' rows, retries, and rows whose process died mid-delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.failpoints import failpoint
from approvals.delivery.outbox import Attempt, Claimed, claim_due, settle_many

log = structlog.get_logger("approvals.outbox")

LEASE = dt.timedelta(seconds=60)  # the default of APPROVALS_OUTBOX_LEASE_SECONDS (app/config.py)
BATCH = 50  # rows leased per kind and claim (claim_due asks each kind on its own)
# Deliveries of one kind in flight at once, unless register() says otherwise. Slack's kinds keep it
# low (rate limits); agent callbacks, which wait on other people's servers, register more.
DELIVERY_CONCURRENCY = 4
DEBOUNCE_SECONDS = 0.005
# Finished attempts are recorded together: once this many wait, and whatever is left when the batch
# ends. A transaction per attempt cost more CPU than the HTTP request itself. A crash before the record
# only means the delivery is made again (same webhook-id) once its lease runs out, as before.
SETTLE_AT = 25


@dataclass(frozen=True)
class Settlement:
    """What became of one attempt; `then` runs extra writes in the transaction that records it."""

    result: Literal["delivered", "retry", "failed", "gone", "skipped"]
    retry_in: float | None = None
    error: str | None = None
    status_code: int | None = None
    target: str | None = None
    then: Callable[[AsyncConnection], Awaitable[None]] | None = None


Handler = Callable[[Claimed], Awaitable[Settlement]]
# Called with a leased batch's rows of one kind before they are delivered: a handler can read what
# they all need at once. Optional; a failure is logged and the handler then reads for itself.
Preparer = Callable[[list[Claimed]], Awaitable[None]]


def backoff(attempt: int, *, cap: float = 300.0) -> float:
    """1 s, 2 s, 4 s, ... up to `cap`: for Slack's transient failures."""
    return float(min(2 ** max(attempt - 1, 0), cap))


class OutboxDispatcher:
    """Runs the handler registered for each kind; one sweep at a time per process."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        debounce: float = DEBOUNCE_SECONDS,
        lease: dt.timedelta = LEASE,
    ) -> None:
        self._engine = engine
        # How long a claimed row stays invisible to other sweeps (the outbox_lease_seconds setting).
        self._lease = lease
        self._handlers: dict[str, Handler] = {}
        self._concurrency: dict[str, int] = {}
        self._preparers: dict[str, Preparer] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        # Attempts waiting to be recorded (with when they started), and the lock whose holder records
        # them all (group commit).
        self._unsettled: list[tuple[Attempt, float]] = []
        self._settling = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._debounce = debounce
        self._loop_task: asyncio.Task[None] | None = None

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        concurrency: int = DELIVERY_CONCURRENCY,
        prepare: Preparer | None = None,
    ) -> None:
        self._handlers[kind] = handler
        self._concurrency[kind] = concurrency
        if prepare is not None:
            self._preparers[kind] = prepare

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Release a handler's resources (its HTTP sessions) when the dispatcher closes."""
        self._closers.append(closer)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def kick(self, kinds: frozenset[str] | None = None) -> None:
        """Deliver what is due now, in the background (called after a commit that queued `kinds`)."""
        if not self._handlers or (kinds is not None and kinds.isdisjoint(self._handlers)):
            return
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._kicked_loop())

    async def _kicked_loop(self) -> None:
        while True:
            await self._wake.wait()
            # A burst of commits (many requests at once) becomes one sweep, not one sweep each.
            await asyncio.sleep(self._debounce)
            self._wake.clear()
            try:
                await self.run_until_idle()
            except Exception:
                log.exception("outbox_dispatch_failed")

    async def run_until_idle(self) -> int:
        """Deliver due rows until none are left; returns how many attempts were made.

        Every attempt is recorded before this returns.
        """
        if not self._handlers:
            return 0
        total = 0
        async with self._lock:
            claimed = await self._claim()
            while claimed:
                # A full batch means more are probably due: the next batch is claimed and read while
                # this one is out, so the claim's database round trips overlap the deliveries' HTTP
                # waits instead of following them (it cannot take this batch's rows: they are leased).
                full = len(claimed) >= BATCH
                upcoming = asyncio.get_running_loop().create_task(self._claim()) if full else None
                try:
                    await self._deliver_batch(claimed)
                except BaseException:
                    if upcoming is not None:
                        upcoming.cancel()
                        with contextlib.suppress(BaseException):
                            await upcoming
                    raise
                total += len(claimed)
                claimed = await upcoming if upcoming is not None else []
                if not claimed:
                    # Claimed after the batch is recorded: rows its deliveries queued (a card's posts
                    # per destination) are due now, and an early claim could not see them.
                    claimed = await self._claim()
        return total

    async def _claim(self) -> list[Claimed]:
        """Lease a batch of due rows and let each kind's preparer read what they need."""
        async with self._engine.begin() as conn:
            claimed = await claim_due(conn, kinds=self.kinds, limit=BATCH, lease=self._lease)
        for kind in {c.kind for c in claimed} & self._preparers.keys():
            try:
                await self._preparers[kind]([c for c in claimed if c.kind == kind])
            except Exception:
                log.exception("outbox_prepare_failed", kind=kind)
        return claimed

    async def _deliver_batch(self, claimed: list[Claimed]) -> None:
        # Bounded per kind: Slack has rate limits, and deliveries that read the database hold a
        # connection meanwhile (clicks waiting on the pool must ack in 3 s).
        limits = {kind: asyncio.Semaphore(self._concurrency[kind]) for kind in {c.kind for c in claimed}}

        async def deliver(item: Claimed) -> None:
            async with limits[item.kind]:
                await self._deliver(item)

        await asyncio.gather(*(deliver(item) for item in claimed))
        await self._settle_unsettled()  # the batch is recorded before the next one goes out

    async def _deliver(self, item: Claimed) -> None:
        started = time.perf_counter()
        failpoint(f"before_{item.kind}")  # crash-safety tests only; inert unless APPROVALS_FAILPOINT is set
        try:
            outcome = await self._handlers[item.kind](item)
        except Exception as exc:
            log.exception("delivery_crashed", kind=item.kind, outbox_id=item.id)
            outcome = Settlement(
                "retry", retry_in=backoff(item.attempt), error=f"{type(exc).__name__}: {exc}"
            )
        failpoint(f"after_{item.kind}")  # delivered but not settled: the row must come due again
        latency_ms = int((time.perf_counter() - started) * 1000)
        if outcome.result in ("failed", "gone"):
            log.error(
                "delivery_failed",
                kind=item.kind,
                outbox_id=item.id,
                request_id=item.request_id,
                error=outcome.error,
            )
        attempt = Attempt(
            item,
            outcome.result,
            target=outcome.target,
            latency_ms=latency_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            retry_in=outcome.retry_in,
        )
        if outcome.then is not None:
            # Its extra writes share its transaction, and may fail without taking others' records along.
            async with self._engine.begin() as conn:
                await settle_many(conn, [attempt])
                await outcome.then(conn)
            return
        self._unsettled.append((attempt, started))
        if len(self._unsettled) >= SETTLE_AT:
            await self._settle_unsettled()

    async def _settle_unsettled(self) -> None:
        """Record every attempt waiting, in one transaction: the first to get the lock writes what
        accumulated while the previous writer held it, so a burst of deliveries costs a few commits.
        A failed write leaves its rows leased: they come due again when the lease runs out."""
        async with self._settling:
            waiting, self._unsettled = self._unsettled, []
            if not waiting:
                return
            recorded = time.perf_counter()
            attempts = [replace(attempt, ago=recorded - started) for attempt, started in waiting]
            try:
                async with self._engine.begin() as conn:
                    await settle_many(conn, attempts)
            except Exception:
                log.exception("outbox_settle_failed", attempts=len(attempts))

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # Attempts made before the stop are recorded now rather than made again after their lease.
        await self._settle_unsettled()
        for closer in self._closers:
            await closer()
