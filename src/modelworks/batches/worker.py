"""The batch worker of one replica: it takes lines (leases, renewed while it works), runs each through the same
gateway and policies as an API request of its endpoint (the key that made the batch; quotas, budgets, content
filters, metering with the batch's id and one usage record per line), stores each line's output line, and finishes
batches: their output and error files, in input order.

Interactive calls come first: a line starts only when its deployment has been quiet a moment, and on a deployment
served by this machine's CPU a running line is stopped when an interactive call arrives (given back, taken again
later, not metered). A rate limit gives the line back too; the batch's 24 hours allow for waiting."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from datetime import timedelta

import orjson

from modelworks.api.errors import OPENAI, envelope
from modelworks.batches.priority import Interactive
from modelworks.batches.store import BatchDB
from modelworks.errors import InsufficientQuota, ModelworksError, Overloaded
from modelworks.policies.chain import Call
from modelworks.protocol.parse import parse_request
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest
from modelworks.responses.protocol import CreateResponse
from modelworks.store.schema import BatchLineRow, BatchRow

log = logging.getLogger("modelworks.batches")

LOCAL_BACKENDS = ("LlamaBackend", "MiniLMBackend")
RETRY_S = 2.0


class BatchWorker:
    def __init__(self, service, keys, handlers, responses, interactive: Interactive, *, concurrency: int = 2,
                 lease_s: float = 60.0) -> None:
        self.service = service
        self.store: BatchDB = service.store
        self.files = service.files
        self.gateway = service.gateway
        self.keys = keys
        self.handlers = handlers  # modelworks.api.routes.Handlers: chat, completions, embeddings
        self.responses = responses  # modelworks.responses.service.ResponsesService
        self.interactive = interactive
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease_s)
        self.owner = uuid.uuid4().hex[:16]
        self.running: dict[tuple[str, int], asyncio.Task] = {}
        self.drain = None  # modelworks.api.drain.Drain: while it drains, no line is taken and running ones finish
        self.processed = 0
        self.stopped = 0  # lines stopped for interactive calls
        self._local_locks: dict[str, asyncio.Lock] = {}

    async def run(self, idle_s: float = 1.0) -> None:
        renewer = asyncio.create_task(self._renew_forever())
        try:
            while True:
                await self._finish_ready()
                free = self.concurrency - len(self.running)
                taken = []
                if free > 0 and not (self.drain is not None and self.drain.draining):
                    try:
                        taken = await asyncio.to_thread(self.store.claim, self.owner, self.lease, free)
                    except Exception:  # noqa: BLE001 - the store is away: later
                        log.warning("could not take batch lines", exc_info=True)
                for batch, line in taken:
                    task = asyncio.create_task(self._line(batch, line))
                    if self.drain is not None:
                        self.drain.track(task)
                    self.running[(line.batch_id, line.line)] = task
                    task.add_done_callback(lambda _t, k=(line.batch_id, line.line): self.running.pop(k, None))
                if taken and len(self.running) < self.concurrency:
                    continue
                self.service.wake.clear()
                try:
                    await asyncio.wait_for(self.service.wake.wait(), idle_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            renewer.cancel()
            lines = list(self.running.values())
            for task in lines:
                task.cancel()
            if lines:  # each gives its line back (see `_line`) for another replica to take at once
                await asyncio.wait(lines, timeout=5)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await asyncio.to_thread(self.store.renew, list(self.running), self.owner, self.lease)
            except Exception:  # noqa: BLE001 - the next renewal may make it
                log.warning("could not renew batch leases", exc_info=True)

    # -- one line -------------------------------------------------------------------------------------------------

    async def _line(self, batch: BatchRow, line: BatchLineRow) -> None:
        try:
            outcome = await self._attempt(batch, line)
        except asyncio.CancelledError:  # the server is stopping: the line goes back now, not when its lease runs out
            try:
                await asyncio.shield(asyncio.to_thread(self.store.release, line.batch_id, line.line, self.owner))
            except Exception:  # noqa: BLE001 - then its lease runs out
                log.warning("could not give back batch %s line %d", line.batch_id, line.line, exc_info=True)
            raise
        except Exception:  # noqa: BLE001 - this line's failure, kept in its output line
            log.warning("batch %s line %d failed", batch.id, line.line, exc_info=True)
            outcome = (False, _result(batch, line, 500, {"error": {"message": "The server failed to run this "
                                                                              "request.", "type": "server_error",
                                                                   "param": None, "code": "server_error"}}), (0, 0))
        try:
            if outcome is None:  # given back: taken again later
                await asyncio.to_thread(self.store.release, line.batch_id, line.line, self.owner)
                return
            ok, result, tokens = outcome
            if await asyncio.to_thread(self.store.finish, line.batch_id, line.line, self.owner, ok, result, tokens):
                self.processed += 1
                self.service.wake.set()
        except Exception:  # noqa: BLE001 - the store failed: the line's lease runs out and it is run again
            log.warning("could not store batch %s line %d", line.batch_id, line.line, exc_info=True)

    async def _attempt(self, batch: BatchRow, line: BatchLineRow):
        deployment = batch.model
        if not self._local(deployment):
            return await self._attempt_on(batch, line, deployment, local=False)
        # on this machine's model one line at a time: an interactive call always finds a free slot, and waits
        # only for the one line it stops (within a token)
        lock = self._local_locks.setdefault(deployment, asyncio.Lock())
        async with lock:
            return await self._attempt_on(batch, line, deployment, local=True)

    async def _attempt_on(self, batch: BatchRow, line: BatchLineRow, deployment: str, local: bool):
        while (wait := self.interactive.quiet(deployment)) > 0:
            await asyncio.sleep(wait)
        principal = await self._principal(batch.key_id)
        if principal is None:
            return False, _result(batch, line, 401, {"error": {
                "message": "The API key that created this batch was revoked or has expired.",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}), (0, 0)
        context = LineCall(f"{batch.id}-{line.line}")
        call = Call(operation="batch" + batch.endpoint[3:].replace("/", "."), headers={}, principal=principal,
                    facts={"batch_id": batch.id, "line": context})
        arrival = self.interactive.arrival(deployment)
        arrival.clear()
        work = asyncio.create_task(self._run(batch, line, call))
        if not local:
            return await work
        stop = asyncio.create_task(arrival.wait())
        try:
            done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the line is being stopped (the server stops): its model call with it
            work.cancel()
            await asyncio.wait({work}, timeout=5)
            raise
        finally:
            stop.cancel()
        if work in done:
            return work.result()
        context.stopped = True  # stopped for an interactive call: not the batch's to pay
        self.stopped += 1
        log.debug("batch %s line %d stopped for an interactive call", batch.id, line.line)
        work.cancel()
        try:
            await work
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it was stopped
            pass
        return None

    def _local(self, deployment: str) -> bool:
        route = self.gateway.routes_get(deployment)
        return route is not None and any(type(m.backend).__name__ in LOCAL_BACKENDS for m in route.pool.members)

    async def _principal(self, key_id: str | None):
        if not key_id:
            return None
        digest = await asyncio.to_thread(self.keys.digest_of, key_id)
        return await asyncio.to_thread(self.keys.lookup, digest) if digest else None

    async def _run(self, batch: BatchRow, line: BatchLineRow, call: Call):
        body = line.body.encode()
        try:
            if batch.endpoint == "/v1/embeddings":
                answer = (await self.handlers.answer_embeddings(call, body)).body
            elif batch.endpoint == "/v1/responses":
                answer = await self.responses.create(call, await parse_request(CreateResponse, body))
            else:
                model = ChatCompletionRequest if batch.endpoint == "/v1/chat/completions" else CompletionRequest
                answer = (await self.handlers.answer(call, body, model)).body
        except InsufficientQuota as exc:
            status, payload, _ = envelope(exc, dialect=OPENAI)
            return False, _result(batch, line, status, payload), (0, 0)
        except Overloaded:  # a rate limit or a full queue: later, the line given back
            await asyncio.sleep(RETRY_S)
            return None
        except ModelworksError as exc:
            status, payload, _ = envelope(exc, dialect=OPENAI)
            return False, _result(batch, line, status, payload), (0, 0)
        payload = orjson.loads(answer) if isinstance(answer, (bytes, bytearray)) else answer
        return True, _result(batch, line, 200, payload), _tokens(payload)

    # -- finishing batches ------------------------------------------------------------------------------------------

    async def _finish_ready(self) -> None:
        try:
            ready = await asyncio.to_thread(self.store.ready)
        except Exception:  # noqa: BLE001 - later
            log.warning("could not look for batches to finish", exc_info=True)
            return
        for batch_id in ready:
            try:
                await asyncio.to_thread(self.finish, batch_id)
            except Exception:  # noqa: BLE001 - its lease runs out and it is finished again
                log.warning("could not finish batch %s", batch_id, exc_info=True)

    def finish(self, batch_id: str) -> bool:
        """Write the output and error files (input order) and end the batch. Safe to repeat: the files' ids are
        the batch's, so a worker that takes over from one that died stores them once."""
        taken = self.store.start_finalizing(batch_id, self.owner, self.lease)
        if taken is None:
            return False
        row, outcome = taken
        spool = self.files.spool
        spool.mkdir(parents=True, exist_ok=True)
        paths = {kind: spool / f"{batch_id}-{kind}-{self.owner}.jsonl" for kind in ("output", "error")}
        counts = {"output": 0, "error": 0}
        try:
            with paths["output"].open("wb") as output, paths["error"].open("wb") as errors:
                after = 0
                while page := self.store.lines(batch_id, after):  # a page at a time: bounded memory
                    for number, custom_id, ok, result in page:
                        if result is None:
                            code = "batch_expired" if outcome == "expired" else "batch_cancelled"
                            message = ("The batch expired before this request was run." if outcome == "expired"
                                       else "The batch was cancelled before this request was run.")
                            result = json.dumps({"id": _request_id(batch_id, number), "custom_id": custom_id,
                                                 "response": None, "error": {"code": code, "message": message}})
                        kind = "output" if ok else "error"
                        (output if kind == "output" else errors).write(result.encode() + b"\n")
                        counts[kind] += 1
                    after = page[-1][0]
                    self.store.renew_finalizing(batch_id, self.owner, self.lease)
            ids = []
            for kind in ("output", "error"):
                if not counts[kind]:
                    ids.append(None)
                    continue
                file_id = "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]
                made = self.files.store_path(row.project_id, paths[kind], f"{batch_id}_{kind}.jsonl",
                                             "batch_output", row.output_expires_s, file_id=file_id)
                ids.append(made["id"])
        finally:
            for path in paths.values():
                path.unlink(missing_ok=True)
        ended = self.store.end(batch_id, self.owner, outcome, ids[0], ids[1])
        if ended:
            log.info("batch %s %s: %d output lines, %d error lines", batch_id, outcome, counts["output"],
                     counts["error"])
        return ended


class LineCall:
    """What every model call of one batch line shares: its usage records' ids (the line's, then a counter: the
    same again when the line is run again after a crash, so that it is metered once) and whether it was stopped
    (then it is not metered at all)."""

    __slots__ = ("base", "calls", "stopped")

    def __init__(self, base: str) -> None:
        self.base = base
        self.calls = 0
        self.stopped = False

    def record_id(self) -> str:
        self.calls += 1
        return self.base if self.calls == 1 else f"{self.base}-{self.calls}"


def _request_id(batch_id: str, line: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def _result(batch: BatchRow, line: BatchLineRow, status: int, body: dict) -> dict:
    return {"id": _request_id(batch.id, line.line), "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": _request_id(batch.id, line.line)[10:],
                         "body": body}, "error": None}


def _tokens(body: dict) -> tuple[int, int]:
    usage = body.get("usage") or {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
    return int(prompt), int(completion)
