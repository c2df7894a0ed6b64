"""The Responses API's service: a request becomes chat-completion model calls through `ModelCalls` (the one way
to call a model, so every policy applies to each call), and the answer becomes a stored Response.

A response's context is the items of the responses it continues (`previous_response_id`) or of its
conversation, then its own input. Each model call is metered with the response's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, AsyncIterator

import orjson
from pydantic import ValidationError

from modelworks.calls import Frames, ModelCalls
from modelworks.offload import offload
from modelworks.protocol.parse import INLINE_BELOW
from modelworks.protocol.structure import MAX_VALUES, too_many_values
from modelworks.errors import InvalidRequest, NotFound
from modelworks.policies.chain import Call
from modelworks.protocol.requests import ChatCompletionRequest
from modelworks.responses.background import STALE_AFTER, Background
from modelworks.responses.context import Context
from modelworks.responses.items import made_lately, normalize_input, response_id, to_chat_messages
from modelworks.responses.journal import ResponseJournal
from modelworks.responses.output import ResponseState, sse
from modelworks.responses.tools import ServerTools
from modelworks.responses.turns import Turns
from modelworks.responses.recent import RecentResponses
from modelworks.responses.writer import ResponseWriter
from modelworks.responses.protocol import CreateResponse, FunctionTool, McpTool, parse_tools
from modelworks.responses.store import ResponseStore

log = logging.getLogger("modelworks.responses")

MAINTAIN_LEASE = timedelta(seconds=95)  # renewed every 30 s by its holder; another replica takes over 95 s after it stops

class ResponsesService:
    def __init__(self, calls: ModelCalls, store: ResponseStore, journal: ResponseJournal, node: str, mcp=None,
                 max_tool_rounds: int = 8) -> None:
        self.calls = calls
        self.store = store
        self.node = node  # this process, as the owner of the background runs it started
        self.drain = None  # modelworks.api.drain.Drain: background runs are waited for when the server stops
        self.background = Background(self)
        self.writer = ResponseWriter(store)
        self.journal = journal
        self.recent = RecentResponses()
        self.turns = Turns(self)
        self.tools = ServerTools(self, mcp, max_tool_rounds)

    # -- create -----------------------------------------------------------------------------------------------

    async def create(self, call: Call, req: CreateResponse) -> dict | bytes | AsyncIterator[bytes]:
        """The finished Response (a dict, or its JSON), or for `stream` the SSE frames (the first model call already
        admitted and its first delta in, so a refusal is an HTTP error, not an event). A background response
        answers at once (queued) and runs on without its client (see `background`)."""
        project, tools, context, route, inputs = await self._request(call, req)
        state = ResponseState(response_id(), req, route.deployment, tools, store=req.store is not False,
                              conversation_id=req.conversation_id)
        if call.facts.get("line") is None:  # a batch line's keeps its operation (batch.responses)
            call.operation = "responses"
        call.facts["response_id"] = state.id
        run = Run(project, state, context, inputs, call, route, tools)
        await self.tools.check(run)
        if req.background:
            return await self.background.start(run)
        events: list[dict] = []
        if req.stream:
            state.emit_to = events.append
            state.announce()
        await self.begin(run)
        if not req.stream:
            return await self.turns.whole(run)
        stream = await self.calls.stream(call)
        return Frames(_frames(self.turns.streaming(run, stream, events)), stream)

    async def _request(self, call: Call, req):
        """What a request (to create, or to count) names: its project, tools, the context it continues, the
        route of its model, its input as stored items."""
        project = call.principal.project_id
        tools = parse_tools(req.tools) or []
        _check_tools(req, tools)
        context, model = await self._context(project, req)
        route = self.calls.gateway.resolve(req.model or model)
        inputs = await normalize_input(req.input, lambda i: asyncio.to_thread(self.store.find_item, project, i))
        return project, tools, context, route, inputs

    async def begin(self, run: "Run") -> None:
        """Before the first model call: the server-run tools listed (and approved calls run), then the call
        admitted. A refusal raises."""
        await self.tools.prepare(run)
        if run.state.req.truncation == "auto" and not run.source.empty:
            await self._truncate(run)
        run.chat = await self.chat_request(run, stream=bool(run.state.req.stream or run.state.req.background))
        await self.calls.admit(run.call, run.route, run.chat)

    async def chat_request(self, run: "Run", *, stream: bool, tool_choice=None) -> ChatCompletionRequest:
        """The chat request of the run's next model call: its context, input and output so far."""
        req, new = run.state.req, run.inputs + run.state.output
        if run.source.follows(new):  # the context's messages are known: only this response's are made
            request = _continued(req, run.tools, run.source, new, stream=stream, functions=run.functions,
                                 tool_choice=tool_choice, searched=run.searched)
            if request is not None:
                return request
        messages = to_chat_messages(run.context + new, req.instructions, run.searched)
        return await _chat_request(req, run.tools, messages, stream=stream, functions=run.functions,
                                   tool_choice=tool_choice)

    async def _truncate(self, run: "Run") -> None:
        """`truncation: auto`: drop the oldest turns of the context (whole turns: it then starts at a user
        message) until the prompt and the room for the answer fit the model's context window. Only where the
        window and a tokenizer are known (the embedded models); an upstream gets the whole context."""
        backend = run.route.backend
        window = getattr(backend, "n_ctx", None)
        if not window:
            return
        reserve = run.state.req.max_output_tokens or getattr(getattr(backend, "spec", None), "max_tokens_default", 256)

        async def fits(cut: int) -> bool | None:
            """Whether the context from `cut` on fits; None when it could not be counted."""
            trial = Run(run.project, run.state, Context(run.context[cut:]), run.inputs, run.call, run.route,
                        run.tools, functions=run.functions)
            try:
                chat = await self.chat_request(trial, stream=False)
            except InvalidRequest as exc:
                if exc.code == "context_too_large":  # too many values to validate: too long for any window
                    return False
                raise
            tokens = await backend.count_prompt_tokens(self.calls.gateway.generation_task(run.route, chat))
            return None if tokens is None else tokens + reserve <= window

        whole = await fits(0)
        if whole is None or whole:
            return  # it fits, or it could not be counted (the model call will say what is wrong)
        cuts = [i for i, item in enumerate(run.context) if item.get("type") == "message" and item.get("role") == "user"]
        cuts.append(len(run.context))
        low, high = 0, len(cuts) - 1  # the earliest cut that fits (the last one keeps no context)
        while low < high:
            middle = (low + high) // 2
            if await fits(cuts[middle]):
                high = middle
            else:
                low = middle + 1
        run.full_source = run.source
        run.source = Context(run.context[cuts[low]:])

    async def save(self, run: "Run", body: dict | None = None) -> bool:
        """Store the response as it is now (`body`, when the caller made it already; when it is stored at
        all); True when a cancel was asked for it."""
        state = run.state
        if not state.store:
            return False
        body = body if body is not None else state.body()
        done = state.status not in ("queued", "in_progress")
        if done and not state.req.background:  # stored once, finished
            if state.conversation_id:  # its conversation's next turn must find it at once
                await self.writer.write((run.project, body, run.inputs, state.output, state.conversation_id))
                return False
            run.body_json = self.journal.append(run.project, body, run.inputs, state.output)  # before the answer
            context = run.full_source if run.full_source is not None else run.source
            after = context.then(run.inputs + state.output)
            if self.recent.put(run.project, state.id, state.model, after):
                asyncio.get_running_loop().call_soon(after.settle)  # its messages: once the answer has gone out
            return False
        async with run.saving:  # a background run's writes (its steps, its heartbeat) one at a time, in order
            body = state.body()
            done = state.status not in ("queued", "in_progress")
            conversation = run.inputs + state.output if state.conversation_id and done else None
            events = state.unsaved_events()
            cancel = await asyncio.to_thread(
                self.store.save, run.project, body, input_items=None if run.inputs_saved else run.inputs,
                output_items=state.output, conversation_id=state.conversation_id, conversation_items=conversation,
                owner=None if done else self.node, events=events)
            run.inputs_saved = True
            state.saved(events)
            return cancel

    async def _context(self, project: str, req) -> tuple[Context, str | None]:
        """The items this request continues, and the model of the response it continues (a default for a
        request that names none)."""
        if req.previous_response_id is not None:
            known = self.recent.get(project, req.previous_response_id)
            if known is not None:
                return known[1], known[0]
            items = await self._stored(lambda: self.store.context(project, req.previous_response_id),
                                       req.previous_response_id)
            previous = {"model": req.model}
            if items is not None and req.model is None:  # the model it continues with, when none is named
                previous = await asyncio.to_thread(self.store.get, project, req.previous_response_id)
            if previous is None or items is None:
                raise NotFound(f"Previous response with id '{req.previous_response_id[:80]}' not found.",
                               param="previous_response_id", code="previous_response_not_found")
            return Context(items), previous.get("model")
        conversation = req.conversation_id
        if conversation is not None:
            items = await asyncio.to_thread(self.store.conversation_items, project, conversation)
            if items is None:
                raise NotFound(f"Conversation with id '{conversation[:80]}' not found.", param="conversation",
                               code="conversation_not_found")
            return Context(items), None
        return Context.none(), None

    # -- read, delete, cancel ---------------------------------------------------------------------------------

    async def _stored(self, read, response_id: str):
        """A store read about a response; for one made in the last seconds that is not there yet, read again for
        a moment: another replica may have answered it with its batch still on the way (see journal)."""
        found = await asyncio.to_thread(read)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while found is None and made_lately(response_id) and loop.time() < deadline:
            await asyncio.sleep(0.02)
            found = await asyncio.to_thread(read)
        return found

    async def retrieve(self, project: str, response_id: str) -> dict:
        body = self.journal.get(project, response_id)
        if body is None:
            body = await self._stored(lambda: self.store.get(project, response_id), response_id)
        if body is None:
            raise _not_found(response_id)
        return body

    async def delete(self, project: str, response_id: str) -> dict:
        self.recent.forget(response_id)
        here = await self.journal.forget(project, response_id)
        # one made on another replica a moment ago may still be on its way: wait for it, or it comes back later
        deleted = await self._stored(lambda: self.store.delete(project, response_id) or None, response_id)
        if not deleted and not here:
            raise _not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(self, project: str, response_id: str) -> dict:
        body = await self.retrieve(project, response_id)
        if not body.get("background"):
            raise InvalidRequest("Only responses created with 'background': true can be cancelled.",
                                 param="response_id", code="invalid_value")
        if body["status"] in ("queued", "in_progress"):
            return await self.background.cancel(project, response_id)
        return body

    async def stream_stored(self, project: str, response_id: str, after: int) -> AsyncIterator[bytes]:
        """Resume a background response's stream after sequence number `after`."""
        body = await self.retrieve(project, response_id)
        if not body.get("background"):
            raise InvalidRequest("Only background responses can be streamed again; retrieve this one without "
                                 "'stream'.", param="stream", code="invalid_value")
        return self.background.follow(project, response_id, after)

    async def maintain(self, purge_every: float, leases=None) -> None:
        """Forever: end the responses whose runner stopped (every 30 s) and purge expired state; with `leases`,
        only on the replica that holds the lease `responses.maintain` (one at a time)."""
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if leases is not None and not await asyncio.to_thread(leases.take, "responses.maintain",
                                                                      MAINTAIN_LEASE):
                    await asyncio.sleep(30)
                    continue
                ended = await asyncio.to_thread(self.store.fail_stale, STALE_AFTER)
                if ended:
                    log.warning("%d response(s) whose server stopped were ended as failed", len(ended))
                if loop.time() - last_purge >= purge_every:
                    last_purge = loop.time()
                    await asyncio.to_thread(self.store.purge)
            except Exception:  # noqa: BLE001 - the store may be away for a moment
                log.warning("response maintenance failed; retrying", exc_info=True)
            await asyncio.sleep(30)

    async def input_items(self, project: str, response_id: str) -> list[dict]:
        items = self.journal.input_items(project, response_id)
        if items is None:
            items = await self._stored(lambda: self.store.input_items(project, response_id), response_id)
        if items is None:
            raise _not_found(response_id)
        return items

    async def input_tokens(self, call: Call, req) -> int:
        """The input tokens a request would send: by the model's own tokenizer where the backend has one (the
        embedded models), else about four characters a token."""
        project, tools, context, route, inputs = await self._request(call, req)
        chat = await _chat_request(req, tools, to_chat_messages(context.items + inputs, req.instructions), stream=False)
        task = self.calls.gateway.generation_task(route, chat)
        counted = await route.backend.count_prompt_tokens(task)
        if counted is not None:
            return counted
        return max(1, len(orjson.dumps([m.model_dump(exclude_none=True) for m in chat.messages])) // 4)


def _check_tools(req, tools: list) -> None:
    choice = req.tool_choice
    names = {t.name for t in tools if isinstance(t, FunctionTool)}
    if choice is not None and choice != "none" and not tools:
        raise InvalidRequest("Invalid value for 'tool_choice': it is only allowed when 'tools' are given.",
                             param="tool_choice", code="invalid_value")
    if getattr(choice, "type", None) == "function" and choice.name not in names:
        raise InvalidRequest(f"Invalid value for 'tool_choice': no function tool named '{choice.name[:64]}'.",
                             param="tool_choice", code="invalid_value")
    labels = {t.server_label for t in tools if isinstance(t, McpTool)}
    if getattr(choice, "type", None) == "mcp" and choice.server_label not in labels:
        raise InvalidRequest(f"Invalid value for 'tool_choice': no MCP tool with server_label "
                             f"'{choice.server_label[:64]}'.", param="tool_choice", code="invalid_value")


@dataclass(slots=True)
class Run:
    """One response being made: who for, what it continues, what it says so far, its first model call."""

    project: str
    state: ResponseState
    source: Context  # what it continues
    inputs: list[dict]
    call: Call
    route: Any
    tools: list
    chat: ChatCompletionRequest | None = None
    functions: list[dict] = field(default_factory=list)  # server-run tools, as function tools for the model
    mcp_names: frozenset[str] = frozenset()
    mcp_map: dict = field(default_factory=dict)  # function name -> (the MCP tool, the server's tool name)
    rounds: int = 0
    cancelled: bool = False
    full_source: Context | None = None  # the context before `truncation: auto` shortened it
    inputs_saved: bool = False  # a background run's input items are written once
    saving: asyncio.Lock = field(default_factory=asyncio.Lock)
    body_json: bytes | None = None  # the finished response as it was logged: the answer's bytes
    searched: dict[str, str] = field(default_factory=dict)  # file_search_call id -> the results the model reads

    @property
    def context(self) -> list[dict]:
        """The items it continues."""
        return self.source.items


async def _frames(events: AsyncIterator[list[dict]]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(events) as steps:  # closed at once when the client leaves, not by the GC
        async for batch in steps:
            yield sse(batch)


async def _chat_request(req, tools: list, messages: list[dict], *, stream: bool, functions: list[dict] = (),
                        tool_choice=None) -> ChatCompletionRequest:
    """The chat request of a model call, validated as a client's would be: a large one off the event loop, and
    one of more JSON values than can be validated without stalling the server refused (a long chain grows)."""
    raw = orjson.dumps(_chat_body(req, tools, messages, stream=stream, functions=functions, tool_choice=tool_choice))
    if len(raw) < INLINE_BELOW:
        return _validated(raw)
    if await too_many_values(raw) is not None:
        raise InvalidRequest(f"The context this response continues, with its input, holds more than {MAX_VALUES:,} "
                             "JSON values: start a new chain (or conversation), or send less.",
                             param="previous_response_id" if getattr(req, "previous_response_id", None) else "input",
                             code="context_too_large")
    return await offload(_validated, raw)


def _continued(req, tools: list, context: Context, new: list[dict], *, stream: bool, functions: list[dict] = (),
               tool_choice=None, searched: dict[str, str] | None = None) -> ChatCompletionRequest | None:
    """The chat request of a model call whose context's messages are known and validated: only the messages of
    `new` (the response's input and output so far) are made and validated, and the body sent on is the same,
    byte for byte, as converting the whole context would give. None where this does not apply (no message of
    its own to send, or a body too large to build on the event loop): the caller converts the whole context."""
    instructions = req.instructions
    head = [{"role": "system", "content": instructions}] if instructions else []
    own = to_chat_messages(new, None, searched)
    if not own or all(m["role"] in ("system", "developer") for m in own):
        return None
    body = _chat_body(req, tools, head, stream=stream, functions=functions, tool_choice=tool_choice, check=False)
    del body["messages"]
    rest = orjson.dumps(body)[1:]  # b'"stream":false,...}'
    head_json, own_json = orjson.dumps(head)[1:-1], orjson.dumps(own)[1:-1]
    if len(rest) + len(context.messages_json) + len(own_json) + len(head_json) >= INLINE_BELOW:
        return None
    body["messages"] = [*head, *context.messages, *own]  # the context's are models: they pass as they are
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _unsendable(exc) from None
    parts = (p for p in (head_json, context.messages_json[1:-1], own_json) if p)
    request._json = b'{"messages":[' + b",".join(parts) + (b"]," + rest if rest != b"}" else b"]}")
    return request


def _chat_body(req, tools: list, messages: list[dict], *, stream: bool, functions: list[dict] = (),
               tool_choice=None, check: bool = True) -> dict:
    if check and (not messages or all(m["role"] in ("system", "developer") for m in messages)):
        raise InvalidRequest("The response has no input to answer: give 'input' (or continue a response or "
                             "conversation that has some).", param="input", code="invalid_value")
    body: dict = {"messages": messages, "stream": stream}
    for name, value in (("max_completion_tokens", getattr(req, "max_output_tokens", None)),
                        ("temperature", getattr(req, "temperature", None)), ("top_p", getattr(req, "top_p", None)),
                        ("parallel_tool_calls", req.parallel_tool_calls)):
        if value is not None:
            body[name] = value
    who = getattr(req, "safety_identifier", None) or getattr(req, "user", None)
    if who:
        body["user"] = who
    reasoning = getattr(req, "reasoning", None)
    if reasoning is not None and reasoning.effort is not None:
        body["reasoning_effort"] = reasoning.effort  # reasoning models upstream; others have nothing to set
    if req.text is not None and req.text.verbosity is not None:
        body["verbosity"] = req.text.verbosity
    if "message.output_text.logprobs" in (getattr(req, "include", None) or []) or getattr(req, "top_logprobs", None):
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    client = [t for t in tools if isinstance(t, FunctionTool)]
    specs = [{"type": "function", "function": {k: v for k, v in (
        ("name", t.name), ("description", t.description), ("parameters", t.parameters),
        ("strict", t.strict)) if v is not None}} for t in client] + list(functions)
    if specs:
        body["tools"] = specs
    choice = tool_choice if tool_choice is not None else req.tool_choice
    if choice is not None and (specs or choice == "none"):
        if isinstance(choice, str):
            body["tool_choice"] = choice
        elif choice.type == "function":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = "required"  # an MCP server's tools: one of them (see ServerTools)
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type != "text":
        body["response_format"] = {"type": fmt.type}
        if fmt.type == "json_schema":
            body["response_format"]["json_schema"] = {k: v for k, v in (
                ("name", fmt.name), ("schema", fmt.schema_), ("strict", fmt.strict),
                ("description", fmt.description)) if v is not None}
    return body


def _validated(raw: bytes) -> ChatCompletionRequest:
    try:
        request = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise _unsendable(exc) from None
    request._json = raw  # what an upstream is sent (and the size policies go by)
    return request


def _unsendable(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    return InvalidRequest(f"The input cannot be sent to the model: {err['msg']} (at {err['loc']}).",
                          param="input", code="invalid_value")


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:80]}' not found.", param="response_id")
