"""Turn a raw body into a validated request, or an InvalidRequest that names the offending `param`."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from modelworks.errors import InvalidRequest

T = TypeVar("T", bound=BaseModel)


def parse_body(model: type[T], body: bytes) -> T:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.", param=None, code="invalid_body")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _to_invalid_request(exc: ValidationError) -> InvalidRequest:
    err = _most_relevant(exc.errors(include_url=False))
    if err["type"] == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            param=None, code="invalid_json",
        )
    if err["type"] == "model_type" and not err["loc"]:
        return InvalidRequest("The request body must be a JSON object.", param=None, code="invalid_body")
    param = param_path(err["loc"])
    message = _message(err, param)
    code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
    if err["type"].endswith("_type") or err["type"] in ("literal_error",):
        code = "invalid_type" if err["type"] != "literal_error" else "invalid_value"
    return InvalidRequest(message, param=param, code=code)


def _most_relevant(errors: list[dict]) -> dict:
    """For unions pydantic reports one error per member; prefer the deepest one, which names the real field."""
    return max(errors, key=lambda e: len([p for p in e["loc"] if not _is_union_tag(p)]))


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_NAMES)


_UNION_MEMBER_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-plain",
                       "is-instance", "NamedToolChoice", "TextPart", "literal['none','auto','required']"}


def param_path(loc: tuple) -> str | None:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_tag(part) or part.startswith("function-") or part.startswith("literal["):
            continue
        else:
            out += ("." if out else "") + part
    return out or None


def _message(err: dict, param: str | None) -> str:
    where = f"'{param}'" if param else "the request body"
    kind = err["type"]
    if kind == "missing":
        return f"Missing required parameter: {where}."
    if kind == "value_error":
        return f"Invalid value for {where}: {err['msg'].removeprefix('Value error, ')}."
    return f"Invalid {'type' if kind.endswith('_type') else 'value'} for {where}: {err['msg']}."
