"""Turn a raw body into a validated request, or an InvalidRequest that names the offending `param`."""

from __future__ import annotations

import re
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from modelworks.errors import InvalidRequest
from modelworks.offload import offload
from modelworks.protocol.structure import MAX_VALUES, too_many_values

T = TypeVar("T", bound=BaseModel)

_BIG_EXPONENT = re.compile(rb"[eE]\+?[0-9]{3}")
_SLICE = 128 * 1024
INLINE_BELOW = 32 * 1024  # bodies up to this size are parsed on the event loop (well under a millisecond)


async def parse_request(model: type[T], body: bytes) -> T:
    """`parse_body`, off the event loop for a large body (a few MiB of JSON take tens of milliseconds); a body
    of more JSON values than can be validated without stalling the server is refused (see structure)."""
    if len(body) < INLINE_BELOW:
        return parse_body(model, body)
    count = await too_many_values(body)
    if count is not None:
        raise InvalidRequest(f"The request body holds more than {MAX_VALUES:,} JSON values (objects, arrays, strings "
                             "and numbers); send fewer, or split the work into several requests.", param=None,
                             code="invalid_body")
    return await offload(parse_body, model, body)


def parse_body(model: type[T], body: bytes) -> T:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.", param=None, code="invalid_body")
    if b"NaN" in body or b"Infinity" in body:
        _parse_strictly(body)
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None
    if _has_big_exponent(body):  # a typed field refused it above, naming itself; a free-form one did not
        _parse_strictly(body)
    return parsed


def _has_big_exponent(body: bytes) -> bool:
    """A three-digit exponent anywhere, searched a slice at a time: one regular-expression call over 8 MiB holds
    the interpreter lock for about 0.1 s, which would stall the event loop even from a worker thread."""
    for start in range(0, len(body), _SLICE):
        if _BIG_EXPONENT.search(body, start, start + _SLICE + 5) is not None:  # 5: an exponent across the cut
            return True
    return False


def _parse_strictly(body: bytes) -> None:
    """NaN and Infinity are not JSON, though pydantic's parser takes them, and it reads 1e999 as infinity; an
    upstream would be sent them as they are. The byte searches before this are cheap; only a body that has the
    letters or a three-digit exponent (inside a string, usually) is parsed strictly: orjson refuses them all."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request. The body must be valid JSON "
                             "(NaN, Infinity and numbers beyond a double's range such as 1e999 are not accepted).",
                             param=None, code="invalid_json") from None


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
    """For unions pydantic reports one error per member; prefer the deepest one, which names the real field, and
    among those one that is about the value rather than its type (the member whose type fitted)."""
    return max(errors, key=lambda e: (len([p for p in e["loc"] if not _is_union_tag(p)]),
                                      not e["type"].endswith("_type")))  # a value out of range over a wrong type


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
