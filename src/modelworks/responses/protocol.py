"""Request bodies of the Responses and Conversations APIs, validated strictly: a field of the wrong type, or one
that would change the answer and cannot be honoured, is a 400 naming it.

`input` items are validated one by one (by their `type`), so an error names the item: `input[3].call_id`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from modelworks.errors import InvalidRequest
from modelworks.protocol.parse import param_path
from modelworks.protocol.requests import INT32_MAX, JSONObject

MAX_INPUT_ITEMS = 2048
MAX_METADATA_PAIRS = 16


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


# -- input items --------------------------------------------------------------------------------------------


class InputText(_Body):
    type: Literal["input_text", "output_text", "text", "refusal"]
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _has_text(self) -> "InputText":
        if self.type == "refusal":
            if self.refusal is None:
                raise ValueError("a 'refusal' part needs 'refusal'")
        elif self.text is None:
            raise ValueError(f"a '{self.type}' part needs 'text'")
        return self


class InputMedia(_Body):
    type: Literal["input_image", "input_file", "input_audio"]
    image_url: str | None = None
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None
    detail: str | None = None


class MessageItem(_Body):
    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=64)
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | InputMedia]
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join((p.text or p.refusal or "") for p in self.content if isinstance(p, InputText))

    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, InputMedia) for p in self.content)


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=64)
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=128)
    arguments: str
    status: str | None = None


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=64)
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[InputText | InputMedia]
    status: str | None = None

    @field_validator("output")
    @classmethod
    def _text_only(cls, value: str | list) -> str | list:
        """A tool's result reaches the model as a chat tool message, which carries text only: an image or a
        file in it would be lost, so it is refused."""
        if not isinstance(value, str) and any(isinstance(p, InputMedia) for p in value):
            raise ValueError("a function call's output can only hold text parts here ('input_text'); send an "
                             "image or a file in a message item")
        return value

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text or "" for p in self.output if isinstance(p, InputText))


class ItemReference(_Body):
    type: Literal["item_reference"] | None = "item_reference"
    id: str = Field(min_length=1, max_length=128)


class McpListToolsItem(_Body):
    type: Literal["mcp_list_tools"]
    id: str | None = Field(default=None, max_length=64)
    server_label: str
    tools: list[JSONObject]
    error: str | None = None


class McpCallItem(_Body):
    type: Literal["mcp_call"]
    id: str | None = Field(default=None, max_length=64)
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: Any = None
    status: str | None = None
    approval_request_id: str | None = None


class McpApprovalRequestItem(_Body):
    type: Literal["mcp_approval_request"]
    id: str = Field(min_length=1, max_length=64)
    server_label: str
    name: str
    arguments: str


class McpApprovalResponseItem(_Body):
    type: Literal["mcp_approval_response"]
    id: str | None = Field(default=None, max_length=64)
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None


class ReasoningItem(_Body):
    type: Literal["reasoning"]
    id: str | None = Field(default=None, max_length=64)


InputItem = (MessageItem | FunctionCallItem | FunctionCallOutputItem | ItemReference | McpListToolsItem | McpCallItem
             | McpApprovalRequestItem | McpApprovalResponseItem | ReasoningItem)

_ITEM_MODELS: dict[str, type[_Body]] = {
    "message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
    "item_reference": ItemReference, "mcp_list_tools": McpListToolsItem, "mcp_call": McpCallItem,
    "mcp_approval_request": McpApprovalRequestItem, "mcp_approval_response": McpApprovalResponseItem,
    "reasoning": ReasoningItem,
}
_ADAPTERS = {name: TypeAdapter(model) for name, model in _ITEM_MODELS.items()}


def parse_items(raw: Any, where: str, limit: int = MAX_INPUT_ITEMS) -> list[InputItem]:
    """A list of input items, each validated by its `type` (a message may leave it out); errors name the item."""
    if not isinstance(raw, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array of input items.",
                             param=where, code="invalid_type")
    if len(raw) > limit:
        raise InvalidRequest(f"Invalid '{where}': at most {limit} items.", param=where, code="invalid_value")
    items = []
    for i, entry in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidRequest(f"Invalid type for '{here}': expected an object.", param=here, code="invalid_type")
        kind = entry.get("type", "message" if "role" in entry else "item_reference" if "id" in entry else None)
        if not isinstance(kind, str) or kind not in _ADAPTERS:
            shown = repr(kind)[:60] if kind is not None else "missing"
            raise InvalidRequest(f"Invalid value for '{here}.type': {shown}. Supported item types: "
                                 f"{', '.join(sorted(_ADAPTERS))}.", param=f"{here}.type", code="invalid_value")
        try:
            items.append(_ADAPTERS[kind].validate_python(entry, strict=True))
        except ValidationError as exc:
            raise _named(exc, here) from None
    return items


def _named(exc: ValidationError, prefix: str) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    inner = param_path(tuple(err["loc"]))
    param = prefix + ("." + inner if inner and not inner.startswith("[") else inner or "")
    kind = err["type"]
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    message = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param,
                          code="invalid_type" if kind.endswith("_type") else "invalid_value")


# -- tools ----------------------------------------------------------------------------------------------------


class FunctionTool(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: JSONObject | None = None
    strict: bool | None = None


class McpTool(_Body):
    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    server_url: str | None = Field(default=None, max_length=2048)
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | JSONObject | None = None
    require_approval: Literal["always", "never"] | JSONObject | None = None
    connector_id: str | None = None

    @model_validator(mode="after")
    def _needs_url(self) -> "McpTool":
        if self.connector_id is not None:
            raise ValueError("connectors are not available here; give 'server_url'")
        if not self.server_url:
            raise ValueError("an MCP tool needs 'server_url'")
        return self


class FileSearchTool(_Body):
    """Searches the project's vector stores before the model answers (see `responses.file_search`)."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(min_length=1, max_length=10)
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    filters: JSONObject | None = None
    ranking_options: JSONObject | None = None


_TOOL_MODELS = {"function": TypeAdapter(FunctionTool), "mcp": TypeAdapter(McpTool),
                "file_search": TypeAdapter(FileSearchTool)}
Tool = FunctionTool | McpTool | FileSearchTool


def parse_tools(raw: Any) -> list[Tool] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    if len(raw) > 128:
        raise InvalidRequest("Invalid 'tools': at most 128 tools.", param="tools", code="invalid_value")
    tools: list[Tool] = []
    for i, entry in enumerate(raw):
        here = f"tools[{i}]"
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in _TOOL_MODELS:
            raise InvalidRequest(f"Unsupported tool type {str(kind)[:60]!r} in '{here}.type': this server runs "
                                 "'function', 'mcp' and 'file_search' tools.", param=f"{here}.type", code="invalid_value")
        try:
            tools.append(_TOOL_MODELS[kind].validate_python(entry, strict=True))
        except ValidationError as exc:
            raise _named(exc, here) from None
    names = [t.name for t in tools if isinstance(t, FunctionTool)]
    if len(set(names)) != len(names):
        raise InvalidRequest("Invalid 'tools': two function tools have the same name.", param="tools",
                             code="invalid_value")
    labels = [t.server_label for t in tools if isinstance(t, McpTool)]
    if len(set(labels)) != len(labels):
        raise InvalidRequest("Invalid 'tools': two MCP tools have the same server_label.", param="tools",
                             code="invalid_value")
    if sum(isinstance(t, FileSearchTool) for t in tools) > 1:
        raise InvalidRequest("Invalid 'tools': at most one file_search tool (it may name several vector stores).",
                             param="tools", code="invalid_value")
    return tools


class ToolChoiceFunction(_Body):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_Body):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


# -- text format ----------------------------------------------------------------------------------------------


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    schema_: JSONObject | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "TextFormat":
        if self.type == "json_schema":
            if self.schema_ is None:
                raise InvalidRequest("Missing required parameter: 'text.format.schema'.",
                                     param="text.format.schema", code="missing_required_parameter")
            if self.name is None:
                raise InvalidRequest("Missing required parameter: 'text.format.name'.",
                                     param="text.format.name", code="missing_required_parameter")
        return self


class TextParam(_Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ConversationRef(_Body):
    id: str = Field(min_length=1, max_length=128)


class Reasoning(_Body):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Body):
    include_obfuscation: bool | None = None


class PromptCacheOptions(_Body):
    ttl: str | None = None
    mode: str | None = None


Metadata = dict[str, str]
INCLUDABLE = frozenset({"message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url",
                        "file_search_call.results", "web_search_call.action.sources", "computer_call_output.output.image_url",
                        "code_interpreter_call.outputs"})


def check_metadata(value: Metadata | None) -> Metadata | None:
    if value is None:
        return value
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs")
    for key, text in value.items():
        if len(key) > 64:
            raise ValueError("keys are at most 64 characters")
        if len(text) > 512:
            raise ValueError("values are at most 512 characters")
    return value


class _Continues(_Body):
    """A request that may continue a stored response or a conversation (not both)."""

    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    conversation: str | ConversationRef | None = None

    @model_validator(mode="after")
    def _one_thread(self) -> "_Continues":
        if self.previous_response_id is not None and self.conversation is not None:
            raise InvalidRequest("Mutually exclusive parameters: 'previous_response_id' and 'conversation' cannot "
                                 "be used together.", param="conversation", code="invalid_value")
        return self

    @property
    def conversation_id(self) -> str | None:
        if self.conversation is None:
            return None
        return self.conversation if isinstance(self.conversation, str) else self.conversation.id


class CreateResponse(_Continues):
    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    store: bool | None = None
    background: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=16, le=INT32_MAX)
    max_tool_calls: int | None = Field(default=None, ge=1, le=1024)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    text: TextParam | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceMcp | None = None
    parallel_tool_calls: bool | None = None
    metadata: Metadata | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = None  # caching hints: accepted, and they change no answer
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    service_tier: str | None = None
    reasoning: Reasoning | None = None
    prompt: JSONObject | None = None
    context_management: list[JSONObject] | None = None  # refused: see `_consistency`
    moderation: JSONObject | None = None

    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))

    @field_validator("include")
    @classmethod
    def _known_includes(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            if entry not in INCLUDABLE:
                raise ValueError(f"unknown include {entry[:80]!r}")
        return value

    @model_validator(mode="after")
    def _consistency(self) -> "CreateResponse":
        if self.background and self.store is False:
            raise InvalidRequest("Invalid value for 'background': a background response must be stored "
                                 "('store' cannot be false).", param="background", code="invalid_value")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("Invalid value for 'stream_options': only allowed when 'stream' is true.",
                                 param="stream_options", code="invalid_value")
        if self.prompt is not None:
            raise InvalidRequest("Stored prompt templates ('prompt') are not available on this server; send "
                                 "'instructions' and 'input'.", param="prompt", code="unsupported_parameter")
        if self.context_management is not None:
            raise InvalidRequest("Context compaction ('context_management') is not available on this server: the "
                                 "model sees the whole context.", param="context_management",
                                 code="unsupported_parameter")
        if self.moderation is not None:
            raise InvalidRequest("Per-request moderation ('moderation') is not available on this server; content "
                                 "filters are set on the deployment.", param="moderation",
                                 code="unsupported_parameter")
        if self.input is None and self.previous_response_id is None and self.conversation is None:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input",
                                 code="missing_required_parameter")
        return self


class InputTokensRequest(_Continues):
    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceMcp | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    truncation: Literal["auto", "disabled"] | None = None


class CreateConversation(_Body):
    metadata: Metadata | None = None
    items: list[Any] | None = None

    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))


class UpdateConversation(_Body):
    metadata: Metadata

    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))


class AddItems(_Body):
    items: list[Any] = Field(min_length=1, max_length=20)
