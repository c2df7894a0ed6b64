"""The `file_search` tool of the Responses API, run by the server before the model answers.

The query is the text of the request's last user message; the tool's vector stores are searched through the
Vector Stores service (the same hybrid search, filters and ranking options, and the query's embedding through the
same deployment path and policies, metered for this response). A `file_search_call` output item records the
queries and, when `include` asks for `file_search_call.results`, the results. The results reach the model as that
tool call's output, as many as fit its context window. The answer's text then gets a `file_citation` annotation
for each result file it draws on: one that shares at least three distinct terms (stemmed words, stop words left
out) with the answer, in the order of the results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.calls import ModelCalls
from modelworks.errors import InvalidRequest, NotFound
from modelworks.responses.items import item_id
from modelworks.responses.protocol import FileSearchTool
from modelworks.vectors.protocol import SearchRequest
from modelworks.vectors.terms import terms

if TYPE_CHECKING:
    from modelworks.responses.service import Run

RESULTS = "file_search_call.results"
SHARED_TERMS = 3
DEFAULT_RESULTS = 10
CONTEXT_CHARS = 24_000  # of results for a model whose window is not known


class FileSearch:
    def __init__(self) -> None:
        self.vectors = None  # modelworks.vectors.service.VectorStoresService, set when the app is built

    @staticmethod
    def tool(run: "Run") -> tuple[int, FileSearchTool] | None:
        return next(((i, t) for i, t in enumerate(run.tools) if isinstance(t, FileSearchTool)), None)

    async def check(self, run: "Run") -> None:
        found = self.tool(run)
        if found is None:
            return
        i, tool = found
        if self.vectors is None:
            raise InvalidRequest("file_search is not enabled on this server.", param=f"tools[{i}]",
                                 code="unsupported_parameter")
        self._search_request(tool, "x", i)  # filters and ranking options checked up front
        for j, store_id in enumerate(tool.vector_store_ids):
            try:
                store = await self.vectors.get(run.project, store_id)
                if store["status"] == "expired":
                    raise InvalidRequest(f"The vector store '{store_id[:80]}' has expired.",
                                         param=f"tools[{i}].vector_store_ids[{j}]", code="vector_store_expired")
            except NotFound:
                raise InvalidRequest(f"No vector store found with id '{store_id[:80]}'.",
                                     param=f"tools[{i}].vector_store_ids[{j}]", code="invalid_value") from None

    def _search_request(self, tool: FileSearchTool, query: str, index: int) -> SearchRequest:
        body = {"query": query, "max_num_results": tool.max_num_results or DEFAULT_RESULTS}
        if tool.filters is not None:
            body["filters"] = tool.filters
        if tool.ranking_options is not None:
            body["ranking_options"] = tool.ranking_options
        try:
            return SearchRequest.model_validate(body)
        except InvalidRequest as exc:
            exc.param = f"tools[{index}].{exc.param}" if exc.param else f"tools[{index}]"
            raise
        except Exception as exc:  # noqa: BLE001 - pydantic's: the first problem, named
            errors = getattr(exc, "errors", lambda: [{}])()
            where = ".".join(str(p) for p in errors[0].get("loc", ()))
            raise InvalidRequest(f"Invalid value for 'tools[{index}].{where}': {errors[0].get('msg', exc)}",
                                 param=f"tools[{index}].{where}" if where else f"tools[{index}]",
                                 code="invalid_value") from None

    async def run(self, run: "Run") -> None:
        """Search before the first model call (when the input has a user message to search for)."""
        found = self.tool(run)
        if found is None:
            return
        i, tool = found
        query = _last_user_text(run.inputs)
        if not query:
            return
        state = run.state
        item = {"id": item_id("file_search_call"), "type": "file_search_call", "status": "in_progress",
                "queries": [query], "results": None}
        position = len(state.output)
        state.output.append(item)
        state.emit({"type": "response.output_item.added", "output_index": position, "item": dict(item)})
        state.emit({"type": "response.file_search_call.in_progress", "item_id": item["id"],
                    "output_index": position})
        item["status"] = "searching"
        state.emit({"type": "response.file_search_call.searching", "item_id": item["id"], "output_index": position})
        call = ModelCalls.another(run.call, "file_search", {"response_id": state.id})
        _, results = await self.vectors.search(run.call.principal, call, list(tool.vector_store_ids),
                                               self._search_request(tool, query, i))
        hits = [{"file_id": r["file_id"], "filename": r["filename"], "score": r["score"],
                 "attributes": r["attributes"] or {}, "text": r["content"][0]["text"]} for r in results]
        state.sources = hits
        run.searched[item["id"]] = _context(hits, _budget(run))
        if RESULTS in (state.req.include or []):
            item["results"] = hits
        item["status"] = "completed"
        state.emit({"type": "response.file_search_call.completed", "item_id": item["id"], "output_index": position})
        state.emit({"type": "response.output_item.done", "output_index": position, "item": dict(item)})


def citations(text: str, sources: list[dict]) -> list[dict]:
    """`file_citation` annotations for the result files the answer draws on (one per file, at the text's end)."""
    answer = set(terms(text))
    if not answer or not sources:
        return []
    needed = min(SHARED_TERMS, len(answer))
    out, seen = [], set()
    for hit in sources:
        if hit["file_id"] in seen:
            continue
        if len(answer & set(terms(hit["text"]))) >= needed:
            seen.add(hit["file_id"])
            out.append({"type": "file_citation", "file_id": hit["file_id"], "filename": hit["filename"],
                        "index": len(text)})
    return out


def _last_user_text(items: list[dict]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content.strip()
            return " ".join(p.get("text") or "" for p in content or [] if isinstance(p, dict)).strip()
    return ""


def _budget(run: "Run") -> int:
    window = getattr(run.route.backend, "n_ctx", None)
    if not window:
        return CONTEXT_CHARS
    return max(1000, window * 2)  # about half the window, at about four characters a token


def _context(hits: list[dict], budget: int) -> str:
    parts, used = [], 0
    for n, hit in enumerate(hits, 1):
        part = f"[{n}] {hit['filename']}: {hit['text']}"
        if used + len(part) > budget:
            part = part[:max(0, budget - used)]
        if not part:
            break
        parts.append(part)
        used += len(part)
    return "\n\n".join(parts) if parts else "No results were found in the files."
