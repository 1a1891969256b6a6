"""Wake long-polling readers in this process as soon as a request they wait on changes."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class RequestWaiters:
    """Per-request events; other replicas' changes are caught by the readers' periodic re-read."""

    def __init__(self) -> None:
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    async def wait(self, request_id: str, seconds: float) -> None:
        """Return when `request_id` is notified or after `seconds`, whichever is first."""
        event = asyncio.Event()
        self._events[request_id].add(event)
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            waiting = self._events.get(request_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[request_id]

    def notify(self, request_id: str) -> None:
        for event in self._events.get(request_id, ()):
            event.set()
