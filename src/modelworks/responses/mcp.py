"""Remote MCP tools, run by the server: list an MCP server's tools and call one, over streamable HTTP with the
official `mcp` SDK. The Responses tool loop calls `McpGateway`; this module knows nothing of responses.

Where a project may connect is `mcp_policy.McpServerPolicy` (the project's `mcp_servers` setting); connections go
only to the addresses it checked, follow no redirect, take no proxy or credentials from the environment, and each
HTTP answer is bounded in size.

Refusals the request itself caused are raised as `InvalidRequest`: a malformed URL, header or filter, and
an address or URL the project may not reach (code `mcp_server_not_allowed`), each a 400 naming the tool's field:
`param` is the tool's place in the request, "tools[2]" (its server_url's, "tools[2].server_url", is taken too),
and errors name "tools[2].server_url", "tools[2].headers" and so on.
A server that cannot be reached or misbehaves is an error string from `call_tool`, and `McpServerError` (424, as
OpenAI answers) from `list_tools`, which a caller may instead record as the `error` of an `mcp_list_tools` item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation

from modelworks import __version__
from modelworks.errors import InvalidRequest, ModelworksError
from modelworks.responses.mcp_policy import McpServerPolicy, PinnedTransport, Unreachable, server_url
from modelworks.responses.protocol import McpTool

T = TypeVar("T")

MAX_PAGES = 16  # of tools/list
MAX_HEADERS, MAX_HEADER_VALUE = 64, 8192
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                     "trailer", "proxy-authorization", "proxy-connection", "accept", "content-type",
                     "mcp-session-id", "mcp-protocol-version", "last-event-id"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")


class McpServerError(ModelworksError):
    """The MCP server could not be reached, or answered badly, while its tools were listed."""

    status = 424
    type = "external_connector_error"
    code = "http_error"


@dataclass(frozen=True)
class ToolFilter:
    """OpenAI's MCP tool filter: tool names (None: any) and read-only-ness (None: either), both to hold."""

    names: frozenset[str] | None = None
    read_only: bool | None = None

    def admits(self, name: str, annotations: dict | None = None) -> bool:
        if self.names is not None and name not in self.names:
            return False
        return self.read_only is None or bool((annotations or {}).get("readOnlyHint")) == self.read_only


def tool_filter(raw: Any, param: str) -> ToolFilter | None:
    """Parse `allowed_tools` (a list of names or a filter object), or one side of `require_approval`."""
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(name, str) for name in raw):
        return ToolFilter(names=frozenset(raw))
    if not isinstance(raw, dict) or set(raw) - {"tool_names", "read_only"}:
        raise InvalidRequest(f"'{param}' takes a list of tool names or an object with 'tool_names' and "
                             "'read_only'.", param=param)
    names, read_only = raw.get("tool_names"), raw.get("read_only")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise InvalidRequest(f"'{param}.tool_names' must be a list of strings.", param=f"{param}.tool_names")
    if read_only is not None and not isinstance(read_only, bool):
        raise InvalidRequest(f"'{param}.read_only' must be a boolean.", param=f"{param}.read_only")
    return ToolFilter(names=None if names is None else frozenset(names), read_only=read_only)


def needs_approval(tool: McpTool, name: str, annotations: dict | None = None, param: str = "tools") -> bool:
    """Whether calling `name` waits for an `mcp_approval_response`. `require_approval` None (the default, as at
    OpenAI) or "always": yes; "never": no. A filter object: a tool its `always` filter admits, yes; else one its
    `never` filter admits, no; any other tool, no when only `always` was given, yes otherwise. `annotations` are
    the tool's, as `list_tools` gives them (for a filter's `read_only`)."""
    rule = _approval(tool, f"{_place(param)}.require_approval")
    if isinstance(rule, bool):
        return rule
    always, never = rule
    if always is not None and always.admits(name, annotations):
        return True
    if never is not None and never.admits(name, annotations):
        return False
    return always is None or never is not None


def _approval(tool: McpTool, where: str) -> bool | tuple[ToolFilter | None, ToolFilter | None]:
    rule = tool.require_approval
    if rule is None or rule == "always":
        return True
    if rule == "never":
        return False
    if not isinstance(rule, dict) or set(rule) - {"always", "never"}:
        raise InvalidRequest(f"'{where}' takes 'always', 'never' or an object with 'always' and 'never' filters.",
                             param=where)
    return tool_filter(rule.get("always"), f"{where}.always"), tool_filter(rule.get("never"), f"{where}.never")


def check_tool(tool: McpTool, param: str = "tools") -> None:
    """Check an MCP tool's fields without reaching its server: the URL's form, the headers, `allowed_tools` and
    `require_approval`. Raises InvalidRequest naming the field; `list_tools` does this first."""
    place = _place(param)
    server_url(tool.server_url or "", f"{place}.server_url")
    request_headers(tool, place)
    tool_filter(tool.allowed_tools, f"{place}.allowed_tools")
    _approval(tool, f"{place}.require_approval")


def _place(param: str) -> str:
    """The tool's place in the request ("tools[2]"), given that or its server_url's ("tools[2].server_url")."""
    return param.removesuffix(".server_url")


def request_headers(tool: McpTool, param: str) -> dict[str, str]:
    """The tool's `headers`, and `authorization` as a bearer token; refused: names the transport owns, values that
    are not printable ASCII."""
    given = dict(tool.headers or {})
    if tool.authorization is not None:
        given = {k: v for k, v in given.items() if k.lower() != "authorization"}
        given["Authorization"] = f"Bearer {tool.authorization}"
    if len(given) > MAX_HEADERS:
        raise InvalidRequest(f"'{param}.headers' holds more than {MAX_HEADERS} headers.", param=f"{param}.headers")
    for key, value in given.items():
        where = f"{param}.authorization" if key == "Authorization" and tool.authorization else f"{param}.headers"
        if not _TOKEN.fullmatch(key) or key.lower() in _RESERVED_HEADERS:
            raise InvalidRequest(f"The header '{key[:100]}' cannot be sent to an MCP server.", param=where)
        if len(value) > MAX_HEADER_VALUE or not _VALUE.fullmatch(value):
            raise InvalidRequest(f"The value of '{key}' must be at most {MAX_HEADER_VALUE} printable ASCII "
                                 "characters.", param=where)
    return given


class McpGateway:
    """Lists and calls the tools of the remote MCP servers a request names, one connection per operation."""

    def __init__(self, policy: McpServerPolicy, *, connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0,
                 max_output_bytes: int = 64 * 1024, max_tools: int = 128,
                 max_response_bytes: int = 4 * 1024 * 1024) -> None:
        self.policy = policy
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.max_output_bytes, self.max_tools, self.max_response_bytes = max_output_bytes, max_tools, max_response_bytes

    async def list_tools(self, project_id: str, tool: McpTool, param: str = "tools") -> list[dict]:
        """The server's tools that `allowed_tools` admits (at most `max_tools`), shaped as OpenAI's
        `mcp_list_tools.tools` entries. Raises McpServerError when the server cannot be listed."""
        param = _place(param)
        check_tool(tool, param)
        allowed = tool_filter(tool.allowed_tools, f"{param}.allowed_tools")
        try:
            return await self._with_server(project_id, tool, param, lambda client: self._list(client, allowed))
        except Unreachable as exc:
            raise McpServerError(f"Error retrieving tool list from MCP server '{tool.server_label}': {exc}",
                                 param=f"{param}.server_url") from None

    async def call_tool(self, project_id: str, tool: McpTool, name: str, arguments: dict,
                        param: str = "tools") -> tuple[str | None, str | None]:
        """Run one tool: (output, None), or (None, error) for an error result or a server that failed. The text
        of each is cut to `max_output_bytes`, with a note saying so."""
        param = _place(param)
        allowed = tool_filter(tool.allowed_tools, f"{param}.allowed_tools")
        if allowed is not None and allowed.names is not None and name not in allowed.names:
            return None, f"The tool '{name}' is not among the allowed_tools of '{tool.server_label}'."
        try:
            result = await self._with_server(project_id, tool, param,
                                             lambda client: client.call_tool(name, arguments))
        except Unreachable as exc:
            return None, self._cut(f"Error calling tool '{name}' on MCP server '{tool.server_label}': {exc}")
        text = _text(result)
        if result.is_error:
            return None, self._cut(text or f"The tool '{name}' failed.")
        return self._cut(text), None

    def needs_approval(self, tool: McpTool, name: str, annotations: dict | None = None,
                       param: str = "tools") -> bool:
        """See the module's `needs_approval`."""
        return needs_approval(tool, name, annotations, param)

    async def _with_server(self, project_id: str, tool: McpTool, param: str,
                           work: Callable[[Client], Awaitable[T]]) -> T:
        headers = request_headers(tool, param)
        target = await self.policy.admit(project_id, tool.server_url or "", f"{param}.server_url")
        timeout = httpx2.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
        deadline = self.connect_timeout_s + self.read_timeout_s
        try:
            with anyio.fail_after(deadline):
                async with httpx2.AsyncClient(transport=PinnedTransport(target, self.max_response_bytes),
                                              headers=headers, timeout=timeout, follow_redirects=False,
                                              max_redirects=0, trust_env=False) as http:
                    transport = streamable_http_client(str(target.url), http_client=http)
                    async with Client(transport, read_timeout_seconds=self.read_timeout_s, cache=None,
                                      client_info=Implementation(name="modelworks", version=__version__)) as client:
                        return await work(client)
        except Exception as exc:  # the SDK's, httpx's, a task group's: all mean the server failed us
            raise Unreachable(_describe(exc, self.read_timeout_s, deadline)) from None

    async def _list(self, client: Client, allowed: ToolFilter | None) -> list[dict]:
        tools: list[dict] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            for found in page.tools:
                entry = {"name": found.name, "description": found.description,
                         "input_schema": found.input_schema or {"type": "object"},
                         "annotations": found.annotations.model_dump(by_alias=True, exclude_none=True)
                         if found.annotations is not None else None}
                if allowed is None or allowed.admits(entry["name"], entry["annotations"]):
                    tools.append(entry)
            cursor = page.next_cursor
            if cursor is None or len(tools) >= self.max_tools:
                break
        return tools[:self.max_tools]

    def _cut(self, text: str) -> str:
        data = text.encode()
        if len(data) <= self.max_output_bytes:
            return text
        kept = data[:self.max_output_bytes].decode("utf-8", "ignore")
        return kept + f"\n[output truncated: {len(data):,} bytes, the first {self.max_output_bytes:,} shown]"


def _text(result: CallToolResult) -> str:
    parts = []
    for block in result.content:
        if block.type == "text":
            parts.append(block.text)
        elif block.type == "resource" and isinstance(getattr(block.resource, "text", None), str):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{block.type} content not shown]")
    if not result.content and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _describe(exc: BaseException, read_s: float, deadline_s: float) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, Unreachable):
        return str(exc)
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return f"no answer in time (each read may take {read_s:g} s, the whole operation {deadline_s:g} s)"
    if isinstance(exc, httpx2.ConnectError):
        return f"could not connect ({exc})"[:500]
    return (str(exc) or type(exc).__name__)[:500]
