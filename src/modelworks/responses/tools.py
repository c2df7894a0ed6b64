"""Tools the server runs for a response: remote MCP servers (`{"type": "mcp", ...}`).

Before the first model call each MCP server's tools are listed (an `mcp_list_tools` item; a list already in
the context is reused) and offered to the model as function tools named `<server_label>__<tool>`. A call of one
is run here (an `mcp_call` item) and the model is called again with its result, at most `max_rounds` calls per
response (then the model must answer in text). A tool that needs approval gets an `mcp_approval_request` item
instead, and the response ends; the client answers with an `mcp_approval_response` item in its next request
(`previous_response_id`), and the approved call is run before that response's first model call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from modelworks.errors import InvalidRequest
from modelworks.responses.file_search import FileSearch
from modelworks.responses.items import function_name, item_id
from modelworks.responses.mcp import check_tool
from modelworks.responses.mcp_policy import Unreachable
from modelworks.responses.protocol import McpTool

if TYPE_CHECKING:
    from modelworks.responses.output import OutputBuilder
    from modelworks.responses.service import ResponsesService, Run

class ServerTools:
    def __init__(self, service: "ResponsesService", mcp, max_rounds: int) -> None:
        self.service = service
        self.mcp = mcp  # modelworks.responses.mcp.McpGateway, or None where MCP is off
        self.max_rounds = max_rounds
        self.file_search = FileSearch()

    async def check(self, run: "Run") -> None:
        """Before anything runs: each MCP tool's fields, and that the project may reach its server (a refusal
        is the request's 400, never a background run that fails later); a file_search tool's stores."""
        await self.file_search.check(run)
        for i, tool in enumerate(run.tools):
            if not isinstance(tool, McpTool):
                continue
            if self.mcp is None:
                raise InvalidRequest("MCP tools are not enabled on this server.", param=f"tools[{i}]",
                                     code="unsupported_parameter")
            check_tool(tool, f"tools[{i}]")
            try:
                await self.mcp.policy.admit(run.project, tool.server_url or "", f"tools[{i}].server_url")
            except Unreachable:
                pass  # listing it reports that, as the mcp_list_tools item's error

    # -- before the first model call --------------------------------------------------------------------------

    async def prepare(self, run: "Run") -> None:
        await self.file_search.run(run)
        servers = [(i, t) for i, t in enumerate(run.tools) if isinstance(t, McpTool)]
        if not servers:
            return
        known = {item["server_label"]: item for item in run.context + run.inputs
                 if item.get("type") == "mcp_list_tools" and not item.get("error")}
        functions, names = [], {}
        for i, tool in servers:
            listing = known.get(tool.server_label) or await self._list(run, i, tool)
            for entry in listing.get("tools") or []:
                fname = function_name(tool.server_label, entry["name"])
                if fname in names:  # `a.b` and `a_b`, or two long names, would reach the model as one
                    raise InvalidRequest(f"The MCP tools '{names[fname][1][:64]}' and '{entry['name'][:64]}' of "
                                         f"'{tool.server_label}' have the same function name for the model; "
                                         "leave one out with 'allowed_tools'.", param=f"tools[{i}].allowed_tools",
                                         code="invalid_value")
                names[fname] = (tool, entry["name"], entry.get("annotations"))
                spec = {"name": fname, "parameters": entry.get("input_schema") or {"type": "object"}}
                if entry.get("description"):
                    spec["description"] = entry["description"][:1024]
                functions.append({"type": "function", "function": spec})
        run.functions, run.mcp_map, run.mcp_names = functions, names, frozenset(names)
        await self._answer_approvals(run)

    async def _list(self, run: "Run", index: int, tool: McpTool) -> dict:
        state = run.state
        item = {"id": item_id("mcp_list_tools"), "type": "mcp_list_tools", "server_label": tool.server_label,
                "tools": []}
        position = len(state.output)
        state.output.append(item)
        state.emit({"type": "response.output_item.added", "output_index": position, "item": dict(item)})
        state.emit({"type": "response.mcp_list_tools.in_progress", "item_id": item["id"], "output_index": position})
        try:
            item["tools"] = await self.mcp.list_tools(run.project, tool, param=f"tools[{index}].server_url")
            state.emit({"type": "response.mcp_list_tools.completed", "item_id": item["id"],
                        "output_index": position})
        except InvalidRequest:
            raise  # not allowed: the request is refused before anything runs
        except Exception as exc:  # noqa: BLE001 - the server could not be listed: the model goes without it
            item["error"] = str(exc)[:1000] or type(exc).__name__
            state.emit({"type": "response.mcp_list_tools.failed", "item_id": item["id"], "output_index": position})
        state.emit({"type": "response.output_item.done", "output_index": position, "item": dict(item)})
        return item

    async def _answer_approvals(self, run: "Run") -> None:
        asked = {item["id"]: item for item in run.context if item.get("type") == "mcp_approval_request"}
        for k, item in enumerate(run.inputs):
            if item.get("type") != "mcp_approval_response":
                continue
            request = asked.get(item["approval_request_id"])
            if request is None:
                raise InvalidRequest(f"No MCP approval request with id '{item['approval_request_id'][:80]}' in "
                                     "the response this continues.", param=f"input[{k}].approval_request_id",
                                     code="invalid_value")
            tool = next((t for t, *_ in run.mcp_map.values() if t.server_label == request["server_label"]), None)
            if tool is None:
                raise InvalidRequest(f"The approved call is for the MCP server '{request['server_label']}', which "
                                     "is not among this request's tools.", param="tools", code="invalid_value")
            await self._run_call(run, tool, request["name"], request["arguments"], approval=request["id"],
                                 approved=bool(item["approve"]))

    # -- after each model call --------------------------------------------------------------------------------

    async def after_call(self, run: "Run", builder: "OutputBuilder"):
        """Run the server's tool calls of the model call that just ended; the next call's chat request, or
        None when the response is finished (no server calls, a client call to make, an approval to ask, or no
        tool calls left)."""
        calls = builder.take_server_calls()
        if not calls:
            return None
        limit = min(self.max_rounds, run.state.req.max_tool_calls or self.max_rounds)
        waiting = False
        for c in calls:
            if run.rounds >= limit:  # a model that called past the bound: those calls are not run
                return None
            tool, name, annotations = run.mcp_map[c["name"]]
            if self.mcp.needs_approval(tool, name, annotations):
                self._ask(run, tool, name, c["arguments"])
                waiting = True
            else:
                await self._run_call(run, tool, name, c["arguments"])
        if waiting or builder.client_calls:
            return None
        builder.next_call()
        stream = bool(run.state.req.stream or run.state.req.background)
        if run.rounds >= limit:  # out of tool calls: the model must answer, and is offered no server tools
            run.functions = []
            return await self.service.chat_request(run, stream=stream, tool_choice="none")
        return await self.service.chat_request(run, stream=stream, tool_choice="auto")

    def _ask(self, run: "Run", tool: McpTool, name: str, arguments: str) -> None:
        state = run.state
        item = {"id": item_id("mcp_approval_request"), "type": "mcp_approval_request",
                "server_label": tool.server_label, "name": name, "arguments": arguments}
        position = len(state.output)
        state.output.append(item)
        state.emit({"type": "response.output_item.added", "output_index": position, "item": dict(item)})
        state.emit({"type": "response.output_item.done", "output_index": position, "item": dict(item)})

    async def _run_call(self, run: "Run", tool: McpTool, name: str, arguments: str, *,
                        approval: str | None = None, approved: bool = True) -> None:
        state = run.state
        run.rounds += 1
        item = {"id": item_id("mcp_call"), "type": "mcp_call", "server_label": tool.server_label, "name": name,
                "arguments": arguments, "output": None, "error": None, "status": "in_progress",
                "approval_request_id": approval}
        position = len(state.output)
        state.output.append(item)
        state.emit({"type": "response.output_item.added", "output_index": position, "item": dict(item)})
        state.emit({"type": "response.mcp_call.in_progress", "item_id": item["id"], "output_index": position})
        state.emit({"type": "response.mcp_call_arguments.done", "item_id": item["id"], "output_index": position,
                    "arguments": arguments})
        output, error = None, None
        if not approved:
            error = "The user did not approve this call."
        else:
            try:
                parsed = orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                error = "The model's arguments for this tool were not a JSON object."
            else:
                output, error = await self.mcp.call_tool(run.project, tool, name, parsed)
        item["output"] = output
        if error is not None:
            item["error"] = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": error}]}
        item["status"] = "failed" if error is not None else "completed"
        state.emit({"type": "response.mcp_call.failed" if error is not None else "response.mcp_call.completed",
                    "item_id": item["id"], "output_index": position})
        state.emit({"type": "response.output_item.done", "output_index": position, "item": dict(item)})
