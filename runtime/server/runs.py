"""One submitted generation job seen from the event loop, for every API's routes: its events,
its cancellation when the client goes away, and the SSE framing."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

from fastapi import Request

from .protocol import APIError
from .scheduler import DoneEvent, ErrorEvent, Job, QueueFullError, ShuttingDownError, TextEvent
from .state import ServerState


def sse(obj, event: Optional[str] = None) -> bytes:
    """One server-sent event: `data: JSON` (with an `event:` line where the API names its events)."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class Run:
    """One submitted job seen from the event loop: its events, and its cancellation when the
    client goes away (a watcher reads the ASGI channel for `http.disconnect`, which a plain
    `await request.is_disconnected()` would miss while the handler waits on the model)."""

    def __init__(self, state: ServerState, request: Request, **job):
        self.state, self.request = state, request
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job = Job(emit=self._emit, timeout_s=state.config.timeout_s, **job)
        self.watcher: Optional[asyncio.Task] = None
        self.done = False

    def _emit(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def start(self) -> None:
        try:
            self.state.scheduler.submit(self.job)
        except QueueFullError as e:
            raise APIError(503, f"the server is busy: {e}; retry later", "server_busy_error",
                           headers={"Retry-After": str(self.state.config.retry_after_s)}) from None
        except ShuttingDownError as e:
            raise APIError(503, str(e), "unavailable_error") from None
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.cancel()
                    self.queue.put_nowait(None)     # wake the handler: nobody waits for the answer
                return

    def cancel(self) -> None:
        self.job.cancel()
        self.state.scheduler.wake()

    async def events(self):
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if isinstance(event, (DoneEvent, ErrorEvent)):
                self.done = True
            yield event
            if self.done:
                return

    def close(self) -> None:
        if not self.done:
            self.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


async def collect(run: Run, take) -> DoneEvent:
    """Wait for a non-streaming job: feed its text events to `take`, return its DoneEvent."""
    async for ev in run.events():
        if isinstance(ev, TextEvent):
            take(ev)
        elif isinstance(ev, DoneEvent):
            return ev
        else:
            raise APIError(ev.status, ev.message, "server_error")
    raise APIError(499, "the client closed the request", "cancelled")
