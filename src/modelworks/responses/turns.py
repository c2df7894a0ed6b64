"""The model calls of one response: the first, and one more after each round of server-run (MCP) tool calls,
up to a bound. Each call is its own `Call` through `ModelCalls`, so every policy applies to each and each is
metered with the response's id.

Two ways to drive it, one logic: `whole` (a JSON answer: non-streaming model calls) and `streaming` (events as
they come; a background run consumes the same events). A call of a client's function tool ends the response
(the client runs it and continues with `previous_response_id`); an MCP tool's call is run here and the model is
called again with its result, unless it needs the client's approval first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AsyncIterator

from modelworks.backends.base import Usage, as_delta
from modelworks.calls import CallStream, ModelCalls, status_of
from modelworks.errors import DRAIN_CUT, ModelworksError
from modelworks.responses.output import OutputBuilder

if TYPE_CHECKING:
    from modelworks.responses.service import ResponsesService, Run

log = logging.getLogger("modelworks.responses")

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Turns:
    def __init__(self, service: "ResponsesService") -> None:
        self.service = service
        self.calls: ModelCalls = service.calls

    # -- a whole answer ---------------------------------------------------------------------------------------

    async def whole(self, run: "Run") -> dict | bytes:
        """Every model call of an admitted run, then the stored response, which is returned (as its JSON where
        it was logged). A failing call raises (the HTTP answer is its error); the calls before it were
        metered."""
        state = run.state
        builder = OutputBuilder(state, run.mcp_names)
        call = run.call
        while True:
            result = await self.calls.generate(call)
            builder.feed(as_delta(result.choices[0], True))
            _add(state, result.usage)
            status = _item_status(builder.finish_reason)
            builder.close(status)
            follow = await self.service.tools.after_call(run, builder)
            if follow is None:
                break
            call = self._next_call(run)
            await self.calls.admit(call, run.route, follow)
        _end(state, builder.finish_reason)
        body = state.body()
        await self.service.save(run, body)
        return run.body_json or body

    # -- a stream ---------------------------------------------------------------------------------------------

    async def streaming(self, run: "Run", stream: CallStream, events: list[dict]) -> AsyncIterator[list[dict]]:
        """Feed the run's streaming model calls into the response; yield the events as they are made (the list
        is emptied by the consumer). Ends with exactly one terminal event; the response and the calls' usage
        are stored before it goes out."""
        state = run.state
        builder = OutputBuilder(state, run.mcp_names)
        counted = False  # this model call's usage is in the response's
        try:
            while True:
                counted = False
                if stream.first is not None:
                    for choice in stream.first.choices:
                        builder.feed(choice)
                yield events
                async for delta in stream.rest():
                    for choice in delta.choices:
                        builder.feed(choice)
                    if events:
                        yield events
                _add(state, stream.usage or _delivered(stream))
                counted = True
                await stream.finish(200)  # the usage record is durable before the answer's end goes out
                builder.close(_item_status(builder.finish_reason))
                follow = await self.service.tools.after_call(run, builder)
                if follow is None:
                    break
                yield events
                call = self._next_call(run)
                await self.calls.admit(call, run.route, follow)
                stream = await self.calls.stream(call)
        except (GeneratorExit, asyncio.CancelledError) as exc:  # the client left, a background run was
            # cancelled, or the server's drain ran out of time
            cut = isinstance(exc, asyncio.CancelledError) and exc.args == (DRAIN_CUT,)
            builder.close("incomplete")
            if not counted:
                _add(state, _delivered(stream))
            await asyncio.shield(stream.finish(499))  # this model call completes now (once), not at collection
            if run.cancelled:
                state.finish("cancelled")
            elif state.req.background or cut:
                state.finish("failed", error={"code": "server_error", "message": "The server stopped before the "
                                              "response finished; send the request again."})
            else:
                state.finish("failed", error={"code": "server_error",
                                              "message": "The client disconnected before the response finished."})
            await asyncio.shield(self.service.save(run))
            if not cut or state.req.background:
                raise
            # a stream cut by the drain ends as any failed response does: with response.failed, then a clean end
            asyncio.current_task().uncancel()
            yield events
            return
        except Exception as exc:  # noqa: BLE001 - a fault mid-stream ends in response.failed, never a cut
            log.warning("response %s failed mid-stream: %s", state.id, exc)
            builder.close("incomplete")
            if not counted:
                _add(state, stream.usage or _delivered(stream))
            await stream.finish(500)  # already done where the fault came from the stream itself
            state.finish("failed", error=error_body(exc))
            await self.service.save(run)
            yield events
            return
        _end(state, builder.finish_reason)
        await self.service.save(run)
        yield events

    def _next_call(self, run: "Run"):
        return ModelCalls.another(run.call, facts={"response_id": run.state.id})


def _add(state, usage: Usage | None) -> None:
    if usage is not None:
        state.usage = Usage(state.usage.prompt_tokens + usage.prompt_tokens,
                            state.usage.completion_tokens + usage.completion_tokens,
                            state.usage.cached_tokens + usage.cached_tokens)


def _delivered(stream: CallStream) -> Usage:
    return Usage(stream.call.facts.get("prompt_tokens", 0), stream.delivered)


def _item_status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in _INCOMPLETE else "completed"


def _end(state, finish_reason: str | None) -> None:
    reason = _INCOMPLETE.get(finish_reason or "")
    if reason:
        state.finish("incomplete", reason=reason)
    else:
        state.finish("completed")


def error_body(exc: BaseException) -> dict:
    status = status_of(exc)
    code = "rate_limit_exceeded" if status == 429 else "invalid_prompt" if status == 400 else "server_error"
    message = str(exc) if isinstance(exc, ModelworksError) else "The model call failed."
    return {"code": code, "message": message[:1000]}
