"""A real MCP server for tests and demos: built with the `mcp` SDK, served over streamable HTTP on loopback.

Tools: `add(a, b)`, `echo(text)` (both annotated read-only), `fail(reason)` (answers an error result),
`slow(seconds)` (sleeps, then answers) and `big(size)` (answers that many characters). Endpoints beside the MCP
one at `/mcp`:

- `GET /_calls` lists the tool calls it ran, oldest first, each with its arguments and the request headers it
  came with (`authorization` among them); `DELETE /_calls` forgets them;
- `POST /moved` (and GET, DELETE) answers a 307 redirect to `/mcp`, for clients that must not follow one.

Run it with `python -m modelworks.testing.mcp_server --port 9100`.
"""

from __future__ import annotations

import argparse
from collections import deque

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

READ_ONLY = ToolAnnotations(read_only_hint=True)
MAX_RECORDED = 1000
MAX_BIG = 16 * 1024 * 1024


def build_server() -> MCPServer:
    server = MCPServer("modelworks-test", instructions="A test server: arithmetic, echoes and failures.")
    calls: deque[dict] = deque(maxlen=MAX_RECORDED)

    def record(ctx: Context, tool: str, arguments: dict) -> None:
        headers = {name.lower(): value for name, value in (ctx.headers or {}).items()}
        calls.append({"tool": tool, "arguments": arguments, "headers": headers,
                      "authorization": headers.get("authorization")})

    @server.tool(description="Add two integers.", annotations=READ_ONLY)
    def add(a: int, b: int, ctx: Context) -> int:
        record(ctx, "add", {"a": a, "b": b})
        return a + b

    @server.tool(description="Answer the text given.", annotations=READ_ONLY)
    def echo(text: str, ctx: Context) -> str:
        record(ctx, "echo", {"text": text})
        return text

    @server.tool(description="Fail with the reason given.")
    def fail(reason: str, ctx: Context) -> str:
        record(ctx, "fail", {"reason": reason})
        raise ToolError(reason)

    @server.tool(description="Wait this many seconds, then answer.")
    async def slow(seconds: float, ctx: Context) -> str:
        record(ctx, "slow", {"seconds": seconds})
        await anyio.sleep(max(0.0, min(seconds, 600.0)))
        return f"slept {seconds} s"

    @server.tool(description="Answer this many characters.")
    def big(size: int, ctx: Context) -> str:
        record(ctx, "big", {"size": size})
        return "x" * max(0, min(size, MAX_BIG))

    @server.custom_route("/_calls", methods=["GET", "DELETE"])
    async def recorded(request: Request) -> Response:
        if request.method == "DELETE":
            calls.clear()
        return JSONResponse({"calls": list(calls)})

    @server.custom_route("/moved", methods=["GET", "POST", "DELETE"])
    async def moved(request: Request) -> Response:
        return RedirectResponse("/mcp", status_code=307)

    return server


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="an MCP test server over streamable HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    app = build_server().streamable_http_app(host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
