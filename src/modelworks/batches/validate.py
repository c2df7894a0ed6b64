"""A batch's input file, checked whole before the batch is made: JSON Lines of `{custom_id, method, url, body}`,
every `url` the batch's endpoint, one model, unique `custom_id`s, bodies that the endpoint would accept, at most
MAX_LINES lines. Problems are a 400 naming `input_file_id`, listing the lines (the first MAX_REPORTED)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from modelworks.errors import InvalidRequest
from modelworks.protocol.parse import parse_body
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

MAX_LINES = 50_000
MAX_CUSTOM_ID = 512
MAX_REPORTED = 20
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions")


def _responses_model():
    from modelworks.responses.protocol import CreateResponse

    return CreateResponse


MODELS = {"/v1/chat/completions": lambda: ChatCompletionRequest, "/v1/completions": lambda: CompletionRequest,
          "/v1/embeddings": lambda: EmbeddingRequest, "/v1/responses": _responses_model}


@dataclass(frozen=True)
class Line:
    number: int
    custom_id: str
    body: bytes  # the request's JSON body


def parse_lines(data: bytes, endpoint: str) -> tuple[list[Line], str]:
    """The lines and their one model (lines[0] names it first); InvalidRequest (param `input_file_id`) listing
    what is wrong."""
    problems: list[str] = []
    lines: list[Line] = []
    seen: dict[str, int] = {}
    models: dict[str, int] = {}
    model_cls = MODELS[endpoint]()
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1].strip() == b"":
        raw_lines.pop()
    if not any(r.strip() for r in raw_lines):
        raise InvalidRequest("The input file has no requests.", param="input_file_id", code="invalid_batch_input")
    if len(raw_lines) > MAX_LINES:
        raise InvalidRequest(f"The input file has {len(raw_lines)} lines; a batch takes at most {MAX_LINES}.",
                             param="input_file_id", code="invalid_batch_input")
    for number, raw in enumerate(raw_lines, 1):
        problem = _line(number, raw, endpoint, model_cls, seen, models, lines)
        if problem is not None:
            problems.append(f"line {number}: {problem}")
    if len(models) > 1:
        first, second = sorted(models, key=models.get)[:2]
        problems.append(f"line {models[second]}: model '{second[:100]}' differs from '{first[:100]}' (line "
                        f"{models[first]}); a batch uses one model")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise InvalidRequest(f"The input file has {len(problems)} invalid line(s): {shown}{more}.",
                             param="input_file_id", code="invalid_batch_input")
    return lines, next(iter(models))


def _line(number: int, raw: bytes, endpoint: str, model_cls, seen: dict, models: dict, lines: list) -> str | None:
    if not raw.strip():
        return "empty line"
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({str(exc).split(':')[0]})"
    if not isinstance(entry, dict):
        return "not a JSON object"
    unknown = set(entry) - {"custom_id", "method", "url", "body"}
    if unknown:
        return f"unknown field '{sorted(unknown)[0][:40]}'"
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id must be a non-empty string"
    if len(custom_id) > MAX_CUSTOM_ID:
        return f"custom_id is over {MAX_CUSTOM_ID} characters"
    if custom_id in seen:
        return f"duplicate custom_id '{custom_id[:100]}' (first on line {seen[custom_id]})"
    seen[custom_id] = number
    if entry.get("method") != "POST":
        return "method must be 'POST'"
    if entry.get("url") != endpoint:
        return f"url '{str(entry.get('url'))[:100]}' is not the batch's endpoint {endpoint}"
    body = entry.get("body")
    if not isinstance(body, dict):
        return "body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "body.model is required"
    if body.get("stream"):
        return "body.stream is not allowed in a batch"
    if body.get("background"):
        return "body.background is not allowed in a batch"
    encoded = orjson.dumps(body)
    try:
        parse_body(model_cls, encoded)
    except InvalidRequest as exc:
        where = f"body.{exc.param}" if exc.param else "body"
        return f"{where}: {exc.message}"
    models.setdefault(model, number)
    lines.append(Line(number, custom_id, encoded))
    return None
