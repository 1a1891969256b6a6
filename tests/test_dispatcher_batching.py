"""The dispatcher records finished attempts together: a leased batch costs a few transactions, not one each.

Every attempt is still recorded (visible in GET /v1/requests/{id}) with its own result, and before
run_until_idle returns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from approvals.db import db_now
from approvals.delivery.outbox import CALLBACK, enqueue_many, outbox_row
from tests.conftest import Api, offer
from tests.receiver import Receiver

REQUESTS = 60  # more than one leased batch


async def test_a_burst_of_callbacks_is_recorded_in_a_few_transactions_and_completely(
    cb_api: Api, receiver: Receiver
) -> None:
    ids = []
    for i in range(REQUESTS):
        body = offer(action="read_mail", title=f"r{i}", callback_url=receiver.url())
        ids.append((await (await cb_api.post("/v1/requests", body)).json())["id"])
    await receiver.wait_for(REQUESTS)
    # `interactive` is the pool's own engine (`engine` is a view of it): a listener on it sees the
    # statements of every view, the dispatcher's included.
    dispatcher, engine = cb_api.container.dispatcher, cb_api.container.interactive
    await dispatcher.run_until_idle()

    # Counted from before the second events are queued: a sweep still kicked by the POSTs above may
    # be the one that takes them.
    recorded: list[int] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if "INSERT INTO DELIVERY_ATTEMPTS" in statement.upper():
            # Rows per statement: executemany's parameter sets, or (PostgreSQL) one array per column.
            arrays = params.get("outbox_id") if isinstance(params, dict) else None
            recorded.append(len(params) if many else len(arrays) if isinstance(arrays, list) else 1)

    # A second event for every request, queued at once (as an expiry sweep does).
    async with engine.begin() as conn:
        now = await db_now(conn)
        rows = [
            outbox_row(
                kind=CALLBACK,
                dedupe_key=f"again:{request_id}",
                request_id=request_id,
                payload={"event": "request.approved"},
                now=now,
            )
            for request_id in ids
        ]
        await enqueue_many(conn, rows)

    # The sweep kicked by the POSTs above may be the one that takes them: either way, once this call
    # has had the dispatcher's lock, everything due was delivered and recorded.
    await dispatcher.run_until_idle()
    event.remove(engine.sync_engine, "before_cursor_execute", _count)

    assert len(receiver.received) == 2 * REQUESTS
    assert sum(recorded) == REQUESTS  # every attempt recorded, each once
    # Not one transaction per attempt: two leased batches (50 + 10) take three with SETTLE_AT = 25.
    assert len(recorded) <= REQUESTS // 10, recorded
    for request_id in ids:
        view = await (await cb_api.get(f"/v1/requests/{request_id}")).json()
        attempts = [(d["kind"], d["result"], d["status_code"]) for d in view["deliveries"]]
        assert attempts == [(CALLBACK, "delivered", 200)] * 2, view["deliveries"]
