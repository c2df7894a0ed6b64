"""Attribute filters of vector-store search and `file_search`: comparisons (`eq`, `ne`, `gt`, `gte`, `lt`,
`lte`, `in`, `nin`) and compounds (`and`, `or`) of them, checked up front (400 naming the place of a bad one) and
evaluated per file: a file's attributes decide for all of its chunks."""

from __future__ import annotations

from typing import Any, Callable

from modelworks.errors import InvalidRequest

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
MAX_DEPTH = 8
MAX_NODES = 64

Predicate = Callable[[dict], bool]


def compile_filter(spec: Any, param: str = "filters") -> Predicate | None:
    """A predicate over a file's attributes (None: no filter)."""
    if spec is None:
        return None
    count = [0]
    return _compile(spec, param, 0, count)


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def _compile(spec: Any, param: str, depth: int, count: list[int]) -> Predicate:
    count[0] += 1
    if count[0] > MAX_NODES or depth > MAX_DEPTH:
        raise _bad(param, f"a filter may hold at most {MAX_NODES} conditions, nested at most {MAX_DEPTH} deep.")
    if not isinstance(spec, dict):
        raise _bad(param, "a filter is an object with a 'type'.")
    kind = spec.get("type")
    if kind in ("and", "or"):
        extra = set(spec) - {"type", "filters"}
        if extra:
            raise _bad(param, f"unknown field '{sorted(extra)[0][:64]}' in a compound filter.")
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise _bad(f"{param}.filters", "a non-empty list of filters.")
        compiled = [_compile(p, f"{param}.filters[{i}]", depth + 1, count) for i, p in enumerate(parts)]
        if kind == "and":
            return lambda attrs: all(c(attrs) for c in compiled)
        return lambda attrs: any(c(attrs) for c in compiled)
    if kind not in COMPARISONS:
        raise _bad(f"{param}.type", f"one of {', '.join(COMPARISONS)}, 'and' or 'or'.")
    extra = set(spec) - {"type", "key", "value"}
    if extra:
        raise _bad(param, f"unknown field '{sorted(extra)[0][:64]}' in a comparison filter.")
    key, value = spec.get("key"), spec.get("value", _MISSING)
    if not isinstance(key, str) or not key:
        raise _bad(f"{param}.key", "the name of an attribute (a string).")
    if value is _MISSING:
        raise _bad(f"{param}.value", "a value to compare with is required.")
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not all(_scalar(v) and not isinstance(v, bool) for v in value):
            raise _bad(f"{param}.value", f"'{kind}' takes a list of strings or numbers.")
        members = list(value)
        if kind == "in":
            return lambda attrs: key in attrs and any(_equal(attrs[key], m) for m in members)
        return lambda attrs: not (key in attrs and any(_equal(attrs[key], m) for m in members))
    if not _scalar(value):
        raise _bad(f"{param}.value", f"'{kind}' takes a string, a number or a boolean.")
    if kind == "eq":
        return lambda attrs: key in attrs and _equal(attrs[key], value)
    if kind == "ne":
        return lambda attrs: not (key in attrs and _equal(attrs[key], value))
    if isinstance(value, bool):
        raise _bad(f"{param}.value", f"'{kind}' compares numbers or strings, not booleans.")
    order = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
             "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}[kind]

    def compare(attrs: dict) -> bool:
        have = attrs.get(key, _MISSING)
        if have is _MISSING or isinstance(have, bool):
            return False
        if _number(have) and _number(value):
            return order(have, value)
        if isinstance(have, str) and isinstance(value, str):
            return order(have, value)
        return False
    return compare


_MISSING = object()


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if _number(have) and _number(want):
        return have == want
    return type(have) is type(want) and have == want


def check_attributes(attributes: Any) -> dict | None:
    """A file's attributes: at most 16, keys up to 64 characters, values strings (up to 512), numbers or
    booleans. Raises ValueError (a request model's validator: the 400 names where the attributes are)."""
    if attributes is None:
        return None
    if not isinstance(attributes, dict) or len(attributes) > 16:
        raise ValueError("attributes are an object of at most 16 keys")
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise ValueError("attribute keys are strings of 1 to 64 characters")
        if isinstance(value, str):
            if len(value) > 512:
                raise ValueError(f"attribute '{key}': strings are at most 512 characters")
        elif not _scalar(value):
            raise ValueError(f"attribute '{key}': values are strings, numbers or booleans")
    return attributes
