"""Function tools on the embedded model, in the Hermes format (SmolLM2, Qwen and many fine-tunes know it).

Rendering. The tools' signatures go into the system message, one JSON line each inside `<tools></tools>`, with
an instruction to answer a call as

    <tool_call>
    {"name": "<function>", "arguments": {...}}
    </tool_call>

An assistant turn with `tool_calls` in the history is written the same way; a `tool` message becomes a user turn
holding `<tool_response>...</tool_response>` (results that follow each other share one turn). All of it is
message text, tokenized as plain text like any other (see llama_prompt): a user cannot forge a turn through it.

Grammar. The answer is generated under a llama.cpp grammar: the call block(s), each holding
`{"name": "<tool>", "arguments": <that tool's parameters schema>}`, any of the callable tools.
- tool_choice "required": a call of some tool; {"type": "function", "function": {"name": X}}: a call of X.
- "auto" (the default with tools): the grammar's root is either the call block(s) or a text whose first character
  is neither `<` nor white space. The model chooses with its first token: an answer is a call from its first
  character or not at all (a text answer cannot begin with `<`, nor hide a call behind leading spaces; a call
  written after some text is that text's, not a call). With response_format json_object or json_schema, the
  text branch is that JSON instead of free text.
- "none": no tools in the prompt and no grammar (the history's calls and results are still rendered).
- parallel_tool_calls true: one or more blocks, one after another; false or unset: exactly one (a 135M model
  asked for "one or more" tends to repeat its call until max_tokens).
- A forced call ("required" or named) wins over response_format, which then does not apply.
Stop sequences do not apply inside a call: the grammar ends it.

Parsing. The grammar fixes the text's shape, so `ToolCallParser` reads it as it grows: content, then for each call
an id and name, then its arguments as they come, holding back only what may still be the call's closing. Every
finished call is checked: its arguments parse as JSON and validate against the tool's schema (jsonschema).
llama.cpp's converter leaves some keywords out (minimum, multipleOf, uniqueItems, oneOf's exclusivity, ...): the
arguments of such a tool are held until the call is whole and checked, then sent in one piece. A call that fails
the check is a server error (`invalid_model_output`, 500), as OpenAI answers when its model's output is invalid.
A call cut short by max_tokens is returned as it stands, with finish_reason "length".
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from modelworks.errors import InvalidRequest, ModelworksError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK_END = "\n" + CALL_CLOSE
_NO_PARAMETERS = {"type": "object", "properties": {}}


# -- what the request asks for ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None
    schema: dict[str, Any]
    schema_json: str  # the schema as JSON, properties in their order (the grammar keeps it): the cache key
    expressed: bool   # the grammar expresses the whole schema: arguments may be streamed as they come


@dataclass(frozen=True, slots=True)
class ToolPlan:
    tools: tuple[Tool, ...]      # offered: all are shown to the model
    callable: tuple[Tool, ...]   # what the grammar lets it call (one tool when tool_choice names it)
    forced: bool                 # a call must be made ("required" or a named tool)
    parallel: bool               # more than one call allowed
    text_schema: str | None = None  # auto mode: the schema a text answer follows (response_format), if any

    def callable_tool(self, name: str) -> Tool | None:
        return next((t for t in self.callable if t.name == name), None)


def plan(request) -> ToolPlan | None:
    """The tools a chat request offers the embedded model, or None when none are in play. May grow with the
    request's schemas: run off the event loop."""
    if not request.tools or request.tool_choice == "none":
        return None
    tools = tuple(_tool(i, t.function) for i, t in enumerate(request.tools))
    names = [t.name for t in tools]
    if len(set(names)) < len(names):
        raise InvalidRequest("Invalid value for 'tools': function names must be unique.", param="tools",
                             code="invalid_value")
    choice = request.tool_choice or "auto"
    callable_ = tools
    if not isinstance(choice, str):
        callable_ = tuple(t for t in tools if t.name == choice.function.name)
        if not callable_:  # the request's own validation refuses this first; kept for requests built in-process
            raise InvalidRequest(f"Invalid value for 'tool_choice': no function named '{choice.function.name}' "
                                 "is among 'tools'.", param="tool_choice", code="invalid_value")
    forced = choice != "auto"
    text_schema = None if forced else _text_schema(request.response_format)
    return ToolPlan(tools, callable_, forced, bool(request.parallel_tool_calls), text_schema)


def _tool(index: int, function) -> Tool:
    schema = function.parameters if function.parameters is not None else _NO_PARAMETERS
    schema_json = json.dumps(schema, ensure_ascii=False)
    try:
        _validator(schema_json)
    except Exception as exc:  # noqa: BLE001 - jsonschema's SchemaError, or a schema it cannot even walk
        reason = getattr(exc, "message", None) or str(exc)
        raise InvalidRequest(f"Invalid schema for function '{function.name}': {reason}",
                             param=f"tools[{index}].function.parameters", code="invalid_value") from None
    return Tool(function.name, function.description, schema, schema_json, _expressed_json(schema_json))


def _text_schema(response_format) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return '{"type": "object"}'
    return json.dumps(response_format.json_schema.schema_ or {}, ensure_ascii=False)


# -- rendering ---------------------------------------------------------------------------------------------------

def tools_prompt(plan: ToolPlan) -> str:
    """The system message's section that shows the model its tools and how to call them."""
    lines = "\n".join(json.dumps({"type": "function", "function": _signature(t)}, ensure_ascii=False)
                      for t in plan.tools)
    text = ("# Tools\n\nYou can call functions to help with the user's request. Their signatures are listed "
            f"below as JSON, inside <tools></tools>:\n<tools>\n{lines}\n</tools>\n\n"
            "To call a function, answer with a JSON object holding its name and its arguments, inside "
            f"{CALL_OPEN}{CALL_CLOSE} tags:\n{CALL_OPEN}\n"
            '{"name": "<function name>", "arguments": {<the arguments>}}\n'
            f"{CALL_CLOSE}")
    if plan.forced and len(plan.callable) == 1:
        text += f"\n\nAnswer by calling {plan.callable[0].name}."
    elif plan.forced:
        text += "\n\nAnswer with a function call."
    else:
        text += "\n\nIf no function helps, answer in plain text instead."
    if plan.parallel:
        text += f" You may make several calls, one {CALL_OPEN} block each."
    return text


def _signature(tool: Tool) -> dict[str, Any]:
    signature: dict[str, Any] = {"name": tool.name}
    if tool.description:
        signature["description"] = tool.description
    signature["parameters"] = tool.schema
    return signature


def calls_text(content: str, tool_calls) -> str:
    """An assistant turn's text with its tool calls written as the model writes them."""
    blocks = [call_block(c.function.name, c.function.arguments) for c in tool_calls]
    return "\n".join(([content] if content else []) + blocks)


def call_block(name: str, arguments: str) -> str:
    try:
        value: Any = json.loads(arguments)
    except ValueError:
        value = arguments  # what the client sent, as a JSON string
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': value}, ensure_ascii=False)}\n{CALL_CLOSE}"


def response_text(text: str) -> str:
    return f"<tool_response>\n{text}\n</tool_response>"


# -- grammar -----------------------------------------------------------------------------------------------------

def grammar(plan: ToolPlan) -> str:
    """The llama.cpp grammar (GBNF) of the answer (cached by what shapes it)."""
    calls = tuple((t.name, t.schema_json) for t in plan.callable)
    return _grammar(calls, plan.forced, plan.parallel, plan.text_schema)


@functools.lru_cache(maxsize=64)
def _grammar(calls: tuple[tuple[str, str], ...], forced: bool, parallel: bool, text_schema: str | None) -> str:
    return grammar_text(calls, forced, parallel, text_schema)


def grammar_text(calls: tuple[tuple[str, str], ...], forced: bool, parallel: bool, text_schema: str | None) -> str:
    """GBNF: `root` is the call block(s), or (auto) those or a text answer. Each schema is converted on its own and
    its rules renamed under a prefix of their own (t0-, t1-, text-), so that no two schemas' rules can clash."""
    rules: list[str] = []
    alternatives = []
    for i, (name, schema_json) in enumerate(calls):
        arguments = _schema_rules(schema_json, f"t{i}-", rules)
        alternatives.append(f"{_literal(json.dumps({'name': name})[:-1] + ', ' + json.dumps('arguments') + ': ')} "
                            f"{arguments} {_literal('}')}")
    block = f"{_literal(CALL_OPEN + chr(10))} ( {' | '.join(alternatives)} ) {_literal(_BLOCK_END)}"
    rules.append(f"tool-calls ::= {block}" + (f" ( {_literal(chr(10))} {block} )*" if parallel else ""))
    if forced:
        rules.append("root ::= tool-calls")
    elif text_schema is not None:
        rules.append(f"root ::= tool-calls | {_schema_rules(text_schema, 'text-', rules, fallback=False)}")
    else:
        rules.append("root ::= tool-calls | free-text")
        rules.append(r"free-text ::= ( [^< \t\n\r] [\U00000000-\U0010FFFF]* )?")
    return "\n".join(rules) + "\n"


# The converter's JSON string character lets raw control characters through, which JSON forbids in strings
# (json.loads would refuse the arguments, and a raw newline could pass for the block's end): not here.
_LOOSE_CHAR = r'[^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_GBNF_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[0-9,\s]*\}|[A-Za-z0-9-]+')


def _schema_rules(schema_json: str, prefix: str, rules: list[str], fallback: bool = True) -> str:
    """Add one schema's rules, renamed under `prefix`, and return the name of its root rule. A tool's schema that
    the converter cannot turn into a grammar (`fallback`) is generated as any JSON object, and checked afterwards
    like every call; a response_format schema it cannot convert is refused, as without tools."""
    for line in _converted(schema_json, fallback).splitlines():
        rules.append(_GBNF_TOKEN.sub(lambda m: _renamed(m.group(0), prefix), line))
    return prefix + "root"


def _renamed(token: str, prefix: str) -> str:
    return token if token[0] in '"[{' else prefix + token


@functools.lru_cache(maxsize=256)
def _converted(schema_json: str, fallback: bool) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(schema_json)
    except Exception as exc:  # noqa: BLE001 - the converter asserts or raises on what it does not know
        if not fallback:
            raise InvalidRequest(f"Invalid schema for response_format: {exc}",
                                 param="response_format.json_schema.schema") from None
        gbnf = json_schema_to_gbnf('{"type": "object"}')
    return "\n".join(f"{name} ::= {_STRICT_CHAR}" if body == _LOOSE_CHAR else f"{name} ::= {body}"
                     for name, _, body in (line.partition(" ::= ") for line in gbnf.splitlines() if line.strip()))


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


# -- what the converter expresses --------------------------------------------------------------------------------

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                          "readOnly", "writeOnly", "format", "$defs", "definitions"})
_EXPRESSED = frozenset({"type", "properties", "required", "additionalProperties", "enum", "const", "anyOf", "items",
                        "prefixItems", "minItems", "maxItems", "pattern", "minLength", "maxLength", "$ref"})
_ARRAY = frozenset({"type", "items", "prefixItems", "minItems", "maxItems"})
_OBJECT = frozenset({"type", "properties", "required", "additionalProperties"})


@functools.lru_cache(maxsize=256)
def _expressed_json(schema_json: str) -> bool:
    return _expressed(json.loads(schema_json))


def _expressed(node: Any) -> bool:
    """Whether llama.cpp's converter turns this schema into a grammar that allows only what the schema allows."""
    if not isinstance(node, dict):
        return False
    defs = [*node.get("$defs", {}).values(), *node.get("definitions", {}).values()]
    keys = set(node) - _ANNOTATIONS
    kind = node.get("type")
    if not keys <= _EXPRESSED or not all(_expressed(d) for d in defs):
        return False
    for alone in ("$ref", "anyOf", "const", "enum"):  # the converter reads these and nothing beside them
        if alone in keys:
            if keys - {alone, "type"}:
                return False
            if alone == "$ref":
                return isinstance(node["$ref"], str) and node["$ref"].startswith("#/")
            return alone != "anyOf" or all(_expressed(s) for s in node["anyOf"])
    if isinstance(kind, list):
        return keys == {"type"}
    if "pattern" in keys:
        pattern = node["pattern"]
        return keys <= {"type", "pattern"} and kind in (None, "string") and pattern[:1] == "^" and pattern[-1:] == "$"
    if keys & {"minLength", "maxLength"}:
        return kind == "string" and keys <= {"type", "minLength", "maxLength"}
    if keys & (_ARRAY - {"type"}):
        return _array_expressed(node, keys, kind)
    if keys & (_OBJECT - {"type"}):
        return _object_expressed(node, keys, kind)
    return True


def _array_expressed(node: dict, keys: set[str], kind: Any) -> bool:
    items = node.get("items")
    if not keys <= _ARRAY or kind not in (None, "array") or (items is None and "prefixItems" not in node):
        return False
    if isinstance(items, dict):  # the converter reads `items` before `prefixItems`
        return "prefixItems" not in node and _expressed(items)
    tuple_items = items if isinstance(items, list) else node["prefixItems"]
    return not keys & {"minItems", "maxItems"} and all(_expressed(s) for s in tuple_items)


def _object_expressed(node: dict, keys: set[str], kind: Any) -> bool:
    properties = node.get("properties", {})
    extra = node.get("additionalProperties")
    if not keys <= _OBJECT or kind not in (None, "object") or not isinstance(properties, dict):
        return False
    if "properties" not in node and extra is True or not set(node.get("required", [])) <= set(properties):
        return False
    return all(_expressed(s) for s in properties.values()) and (not isinstance(extra, dict) or _expressed(extra))


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str):
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


# -- parsing -----------------------------------------------------------------------------------------------------

_MORE = "more"  # the text may still grow into a call's start
_NAME, _SPACE = object(), object()
_HEADER = (CALL_OPEN + "\n", "{", _SPACE, '"name"', _SPACE, ":", _SPACE, _NAME, _SPACE, ",", _SPACE,
           '"arguments"', _SPACE, ":", _SPACE)
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-")


@dataclass(slots=True)
class _Call:
    index: int
    id: str
    name: str
    start: int          # where its arguments begin in the text
    streamed: bool      # arguments sent as they come (else in one piece once checked)
    arguments: str = ""  # what has been released
    closed: bool = False

    def release(self, arguments: str) -> list[dict[str, Any]]:
        if len(arguments) <= len(self.arguments):
            return []
        fragment, self.arguments = arguments[len(self.arguments):], arguments
        return [{"tool_calls": [{"index": self.index, "function": {"arguments": fragment}}]}]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class ToolCallParser:
    """One choice's generated text, read as it grows into content and tool calls. `feed` and `finish` return
    stream deltas (`{"content": ...}` or `{"tool_calls": [...]}`); `message` is the whole answer."""

    plan: ToolPlan
    text: str = ""
    calls: list[_Call] = field(default_factory=list)
    _content: list[str] = field(default_factory=list)
    _mode: str | None = None  # "text" or "calls", once known
    _sent: int = 0            # text mode: how much of the text is released
    _pos: int = 0             # calls mode: where the next call's block may begin

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        return self._advance(final=False)

    def finish(self) -> list[dict[str, Any]]:
        return self._advance(final=True)

    def message(self) -> dict[str, Any]:
        content = "".join(self._content)
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if self.calls else ""),
                                   "refusal": None}
        if self.calls:
            message["tool_calls"] = [c.as_dict() for c in self.calls]
        return message

    def finish_reason(self, reason: str) -> str:
        """"tool_calls" once the answer's calls are whole: also when max_tokens ran out just as the only call
        allowed closed (the end-of-turn token it then has to write is all that is missing)."""
        done = self.calls and self.calls[-1].closed
        return "tool_calls" if done and (reason == "stop" or reason == "length" and not self.plan.parallel) else reason

    def _advance(self, final: bool) -> list[dict[str, Any]]:
        if self._mode is None:
            head = self.text[:len(CALL_OPEN)]
            if not head or (CALL_OPEN.startswith(head) and len(head) < len(CALL_OPEN) and not final):
                return []  # may still be the start of a call: held back
            self._mode = "calls" if head == CALL_OPEN else "text"
        if self._mode == "text":
            return self._text(len(self.text))
        return self._calls(final)

    def _text(self, upto: int) -> list[dict[str, Any]]:
        piece, self._sent = self.text[self._sent:upto], max(self._sent, upto)
        if not piece:
            return []
        self._content.append(piece)
        return [{"content": piece}]

    def _calls(self, final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            call = self.calls[-1] if self.calls and not self.calls[-1].closed else None
            if call is None:
                rest = self.text[self._pos:]
                skip = len(rest) - len(rest.lstrip())
                found = _scan_header(rest[skip:]) if rest.strip() else _MORE
                if found == _MORE and not final:
                    return out
                if found == _MORE or found is None:  # not a call (after the last one, or cut short): content
                    if not rest.strip():
                        return out
                    self._mode, self._sent = "text", self._pos
                    return out + self._text(len(self.text))
                name, length = found
                tool = self.plan.callable_tool(name)
                call = _Call(len(self.calls), "call_" + secrets.token_hex(12), name, self._pos + skip + length,
                             streamed=tool is not None and tool.expressed)
                self.calls.append(call)
                out.append({"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})
            body = self.text[call.start:]
            end = body.find(_BLOCK_END)
            if end < 0:
                if call.streamed or final:
                    out += call.release(body[:len(body) - _closing_tail(body)])
                return out
            arguments = _arguments(body[:end])
            _check(self.plan, call.name, arguments)
            out += call.release(arguments)
            call.closed = True
            self._pos = call.start + end + len(_BLOCK_END)


def _scan_header(s: str) -> tuple[str, int] | str | None:
    """Match `<tool_call>\\n{"name": "X", "arguments": ` (spaces free) at the start of `s`: (X, its length) once
    the arguments' first character follows, _MORE while `s` may still grow into it, None when it cannot."""
    pos, name = 0, ""
    for part in _HEADER:
        if part is _SPACE:
            while pos < len(s) and s[pos] == " ":
                pos += 1
        elif part is _NAME:
            end = pos + 1
            while end < len(s) and s[end] in _NAME_CHARS:
                end += 1
            if end >= len(s):
                return _MORE if s[pos:pos + 1] in ('"', "") else None
            if s[pos] != '"' or s[end] != '"' or end == pos + 1:
                return None
            name, pos = s[pos + 1:end], end + 1
        else:
            chunk = s[pos:pos + len(part)]
            if chunk != part:
                return _MORE if len(chunk) < len(part) and part.startswith(chunk) else None
            pos += len(part)
    return (name, pos) if pos < len(s) else _MORE


def _closing_tail(body: str) -> int:
    """How much of the end of a call's text so far may be its closing (` }` and `\\n</tool_call>`), not arguments."""
    cut = next((k for k in range(min(len(_BLOCK_END), len(body)), 0, -1) if body.endswith(_BLOCK_END[:k])), 0)
    kept = body[:len(body) - cut].rstrip(" ")
    if kept.endswith("}"):
        kept = kept[:-1]
    return len(body) - len(kept.rstrip(" "))


def _arguments(body: str) -> str:
    """A whole call's arguments: its text up to the block's end, less the closing brace of the call object."""
    kept = body.rstrip()
    if not kept.endswith("}"):
        raise _invalid("a tool call that is not a JSON object")
    return kept[:-1].rstrip()


def _check(plan: ToolPlan, name: str, arguments: str) -> None:
    tool = plan.callable_tool(name)
    if tool is None:
        raise _invalid(f"a call of '{name}', which is not a function it may call")
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise _invalid(f"arguments for '{name}' that are not JSON ({exc})") from None
    from jsonschema.exceptions import best_match

    error = best_match(_validator(tool.schema_json).iter_errors(value))
    if error is not None:
        raise _invalid(f"arguments for '{name}' that do not match its parameters schema: {error.message}")


def _invalid(what: str) -> ModelworksError:
    return ModelworksError(f"The model produced {what}. Retrying the request may help.",
                           code="invalid_model_output")
