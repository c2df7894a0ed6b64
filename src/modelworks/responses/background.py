"""Background responses: answered `queued` at once, run on without their client, polled, cancelled, and
streamed from any point (`starting_after`), on this replica or another.

The run is an asyncio task of the process that accepted it (its `owner`). It writes the response and its events
to the store as it goes (at most every `SAVE_EVERY` seconds, and a heartbeat while it waits), so a client that
polls or resumes on another replica sees it, and a replica that stops leaves a row that the others end: a
queued or in-progress response not written for `STALE_AFTER` is failed with a reason (`ResponsesService.maintain`).
A cancel on another replica is a flag in the row, which the owner reads at its next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import AsyncIterator

from modelworks.responses.output import sse
from modelworks.responses.turns import error_body

log = logging.getLogger("modelworks.responses")

SAVE_EVERY = 0.5
HEARTBEAT = 5.0
STALE_AFTER = timedelta(seconds=60)
POLL = 0.25
TERMINAL = {"response.completed", "response.failed", "response.incomplete"}


class Background:
    def __init__(self, service) -> None:
        self.service = service
        self.runs: dict[str, tuple] = {}  # response id -> (run, task, changed event)

    async def start(self, run) -> dict | AsyncIterator[bytes]:
        state = run.state
        state.status = "queued"
        state.announce()
        await self.service.save(run)
        changed = asyncio.Event()
        task = asyncio.create_task(self._run(run, changed), name=f"response-{state.id}")
        if self.service.drain is not None:
            self.service.drain.track(task)  # a stopping server lets it finish within its drain, or fails it
        self.runs[state.id] = (run, task, changed)
        if run.state.req.stream:
            return self.follow(run.project, state.id, -1)
        return state.body()

    async def _run(self, run, changed: asyncio.Event) -> None:
        svc, state = self.service, run.state
        saved = time.monotonic()
        batch: list[dict] = []

        def emitted(event: dict) -> None:
            batch.append(event)
            changed.set()

        state.emit_to = emitted
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            state.start()
            await svc.begin(run)
            stream = await svc.calls.stream(run.call)
            async with contextlib.aclosing(svc.turns.streaming(run, stream, batch)) as steps:
                async for events in steps:  # a cancel anywhere here closes the steps, which end the response
                    events.clear()
                    if time.monotonic() - saved >= SAVE_EVERY and state.status == "in_progress":
                        saved = time.monotonic()
                        await self._save(run)
        except asyncio.CancelledError:
            if state.status in ("queued", "in_progress"):  # before the model call streamed
                if run.cancelled:
                    state.finish("cancelled")
                else:  # the server is stopping
                    state.finish("failed", error={"code": "server_error", "message": "The server stopped before "
                                                  "the response finished; send the request again."})
                await asyncio.shield(svc.save(run))
        except Exception as exc:  # noqa: BLE001 - a refusal (quota, filter) or a fault: the response fails
            if state.status in ("queued", "in_progress"):
                state.finish("failed", error=error_body(exc))
                await svc.save(run)
        finally:
            heartbeat.cancel()
            self.runs.pop(state.id, None)
            changed.set()

    async def _save(self, run) -> None:
        if await self.service.save(run) and not run.cancelled:
            self._cancel_local(run.state.id)  # another replica asked for the cancel

    async def _heartbeat(self, run) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._save(run)
            except Exception:  # noqa: BLE001 - the next write tries again
                log.warning("could not save background response %s", run.state.id, exc_info=True)

    def _cancel_local(self, response_id: str) -> bool:
        entry = self.runs.get(response_id)
        if entry is None:
            return False
        run, task, _ = entry
        run.cancelled = True
        task.cancel()
        return True

    async def cancel(self, project: str, response_id: str) -> dict:
        entry = self.runs.get(response_id)
        if entry is not None and self._cancel_local(response_id):
            try:
                await asyncio.wait_for(asyncio.shield(entry[1]), 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        else:  # running on another replica: it sees the flag at its next write (at most HEARTBEAT seconds)
            store = self.service.store
            await asyncio.to_thread(store.request_cancel, project, response_id)
            deadline = time.monotonic() + HEARTBEAT * 2 + 1
            while time.monotonic() < deadline:
                body = await asyncio.to_thread(store.get, project, response_id)
                if body is None or body["status"] not in ("queued", "in_progress"):
                    break
                await asyncio.sleep(POLL)
        return await self.service.retrieve(project, response_id)

    async def follow(self, project: str, response_id: str, after: int) -> AsyncIterator[bytes]:
        """The response's events after sequence number `after`, live until its terminal event: from memory
        when this process runs it, else from the store."""
        while True:
            entry = self.runs.get(response_id)
            if entry is not None:
                run, _, changed = entry
                events = run.state.events
                fresh = events[after + 1:]
                if fresh:
                    after = fresh[-1]["sequence_number"]
                    done = fresh[-1]["type"] in TERMINAL
                    yield sse(fresh)
                    if done:
                        return
                    continue
                changed.clear()
                if self.runs.get(response_id) is entry and len(events) <= after + 1:
                    await changed.wait()
                continue
            found = await asyncio.to_thread(self.service.store.events, project, response_id, after)
            if found is None:
                return
            events, status = found
            if events:
                after = events[-1]["sequence_number"]
                done = events[-1]["type"] in TERMINAL
                yield sse(events)
                if done:
                    return
            elif status not in ("queued", "in_progress"):
                return
            else:
                await asyncio.sleep(POLL)
