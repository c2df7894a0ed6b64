"""The one way to call a deployment's model: admit, dispatch, review, complete.

Chat and text completions, each model call of a Responses turn (a tool loop makes several) and every later
feature that needs a model go through `ModelCalls`, so quotas, budgets, content filters, residency, metering,
metrics and traces apply once and the same everywhere. One `Call` is one model call: it is admitted by the policy
chain, dispatched to a backend of its route's pool, reviewed, and completed exactly once, however it ends, with
the usage that was delivered.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from modelworks.backends.base import Delta, Generation, Usage
from modelworks.errors import ModelworksError
from modelworks.policies.chain import Call, PolicyChain
from modelworks.service import Gateway, Route


class ModelCalls:
    def __init__(self, gateway: Gateway, chain: PolicyChain) -> None:
        self.gateway = gateway
        self.chain = chain

    @staticmethod
    def another(call: Call, operation: str | None = None, facts: dict | None = None) -> Call:
        """A further model call made for the same authenticated request (a tool loop's next turn); a batch line's
        calls all carry the line (its metering and its priority)."""
        carried = {k: call.facts[k] for k in ("batch_id", "line") if k in call.facts}
        return Call(operation=operation or call.operation, headers=call.headers, deployment=call.deployment,
                    principal=call.principal, facts={**carried, **(facts or {})})

    async def admit(self, call: Call, route: Route, request, body: bytes = b"") -> None:
        """Check the route can serve the request, let the policies admit it, and pick its dispatch. A refusal
        completes the call (one usage record, even for a refused call) and raises."""
        task = self.gateway.generation_task(route, request, body or getattr(request, "_json", b""))
        call.route, call.task = route, task
        try:
            await self.chain.admit(call)
        except ModelworksError as exc:
            await self.chain.complete(call, None, exc.status)
            raise
        # a provisioned deployment over capacity may have spilled over: the policies may change the route
        call.dispatch = self.gateway.dispatch(call.route, call.task, call.facts.get("span"))

    async def embed(self, call: Call, route: Route, req):
        """Embeddings for an `EmbeddingRequest`, admitted, dispatched and completed (metered) like every call:
        `/v1/embeddings`, and the vectors of vector-store chunks and searches. Returns the backend's result."""
        call.route = route
        call.facts["embedding_input"] = req.input
        try:
            await self.chain.admit(call)
            call.dispatch = self.gateway.dispatch(call.route, span=call.facts.get("span"))
            result = await self.gateway.embed(call.route, req, call.dispatch)
        except BaseException as exc:
            await self.chain.complete(call, None, status_of(exc))
            raise
        call.response_headers.update(call.dispatch.headers())
        await self.chain.complete(call, Usage(result.prompt_tokens, 0), 200)
        return result

    async def generate(self, call: Call) -> Generation:
        """The whole answer of an admitted call; the call is completed when this returns or raises."""
        dispatch = call.dispatch
        try:
            result = await dispatch.generate(call.task)
        except BaseException as exc:
            name_backend(exc, dispatch)
            await self.chain.complete(call, None, status_of(exc))
            raise
        call.response_headers.update(dispatch.headers())
        try:
            await self.chain.review(call, result)
        except BaseException:
            await self.chain.complete(call, result.usage, 500)
            raise
        await self.chain.complete(call, result.usage, 200)
        return result

    async def stream(self, call: Call) -> "CallStream":
        """Start streaming an admitted call: the first delta has arrived (or the stream was empty) when this
        returns. The caller iterates the stream and must `finish` it."""
        dispatch = call.dispatch
        deltas = self.chain.review_stream(call, dispatch.stream(call.task))
        stream = CallStream(self.chain, call, deltas)
        try:
            stream.first = await anext(deltas)
            call.facts["first_at"] = time.monotonic()
        except StopAsyncIteration:
            call.response_headers.update(dispatch.headers())
            stream.finished = True
            await self.chain.complete(call, None, 200)
            return stream
        except BaseException as exc:
            name_backend(exc, dispatch)
            stream.finished = True
            await deltas.aclose()
            await self.chain.complete(call, None, status_of(exc))
            raise
        call.response_headers.update(dispatch.headers())
        stream.note(stream.first)
        return stream


class CallStream:
    """A streaming model call: `first` (None when the backend sent nothing), then `rest()`. It counts what was
    delivered, so a stream cut short (an error, a client that left) is metered for what the client received."""

    __slots__ = ("chain", "call", "deltas", "first", "usage", "delivered", "finished")

    def __init__(self, chain: PolicyChain, call: Call, deltas: AsyncIterator[Delta]) -> None:
        self.chain = chain
        self.call = call
        self.deltas = deltas
        self.first: Delta | None = None
        self.usage: Usage | None = None
        self.delivered = 0  # deltas with generated text or tool calls
        self.finished = False

    @property
    def empty(self) -> bool:
        return self.first is None

    def note(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        for choice in delta.choices:  # a role-only or finishing delta carries no generated token
            d = choice.get("delta")
            if choice.get("text") or (d is not None and (d.get("content") or d.get("tool_calls"))):
                self.delivered += 1
                break

    async def rest(self) -> AsyncIterator[Delta]:
        """The deltas after `first`. An error or a consumer that stops early finishes the call (status 500, or
        200 when something was delivered); a stream that ends is left to `finish(200)` by the caller, so that
        the caller can complete the call before it sends its own last bytes."""
        if self.finished:
            return
        try:
            async for delta in self.deltas:
                self.note(delta)
                yield delta
        except BaseException:
            await self.finish(500)
            raise

    async def finish(self, status: int = 200) -> None:
        """Complete the call once (later calls do nothing): the backend's usage when the stream ran to its end,
        else what was delivered."""
        if self.finished:
            return
        self.finished = True
        await self.deltas.aclose()
        usage = self.usage
        if usage is None or status != 200:  # cut short: what was delivered
            usage = Usage(self.call.facts.get("prompt_tokens", 0), self.delivered)
        await self.chain.complete(self.call, usage, 200 if self.delivered else status)


def name_backend(exc: BaseException, dispatch) -> None:
    """An error that came from a backend says which one (x-modelworks-backend, x-ms-region), as answers do."""
    if isinstance(exc, ModelworksError) and dispatch.last is not None:
        exc.headers = {**exc.headers, **dispatch.headers()}


def status_of(exc: BaseException) -> int:
    """The status a failed call is metered with: the error's own, 499 for a client that left, else 500."""
    if isinstance(exc, ModelworksError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return 499
    return 500


class Frames:
    """A stream's frames for the HTTP layer: closed before its first frame was asked for (the client left at
    once), it still finishes the model call, so the call is completed and metered, and its backend stops."""

    __slots__ = ("frames", "stream", "started")

    def __init__(self, frames: AsyncIterator[bytes], stream: "CallStream") -> None:
        self.frames = frames
        self.stream = stream
        self.started = False

    def __aiter__(self) -> "Frames":
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        return await self.frames.__anext__()

    async def aclose(self) -> None:
        await self.frames.aclose()
        if not self.stream.finished:
            await self.stream.finish(499)
