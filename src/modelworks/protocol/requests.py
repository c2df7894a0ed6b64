"""Request bodies of the OpenAI API, validated strictly: a field of the wrong type is a 400 naming it.

Unknown fields are ignored. Strict mode means no silent coercion ("1" is not an integer, 1 is not a boolean);
a JSON integer is still accepted where a number is expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from modelworks.errors import InvalidRequest

JSONObject = dict[str, Any]
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]  # what upstreams and databases can hold
INT32_MAX = 2**31 - 1  # token counts and dimensions: far above any model's, low enough for every counter
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]  # token ids are 32-bit in every tokenizer we serve

MODERATION_MAX_INPUTS = 2048
MODERATION_MAX_CHARS = 256 * 1024  # in all a request's inputs: about 64k tokens
SHIELD_MAX_CHARS = 10_000  # Azure's Prompt Shields limits: the user prompt, and all documents together


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=False, allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    refusal: str | None = None
    image_url: JSONObject | None = None
    input_audio: JSONObject | None = None
    file: JSONObject | None = None

    @model_validator(mode="after")
    def _text_needs_text(self) -> "TextPart":
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs a 'text' string")
        return self


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id'")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a message with role '{self.role}' needs 'content'")
        return self

    def text(self) -> str:
        """The message's text; non-text parts are refused by backends that cannot read them."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or p.refusal or "" for p in self.content if p.type in ("text", "refusal"))

    def has_non_text_parts(self) -> bool:
        return isinstance(self.content, list) and any(p.type not in ("text", "refusal") for p in self.content)


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: JSONObject | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: JSONObject | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequest("Missing required parameter: 'response_format.json_schema'.",
                                 param="response_format.json_schema", code="missing_required_parameter")
        return self


class StreamOptions(_Body):
    include_usage: bool | None = None


Stop = str | list[str] | None


def _check_stop(value: Stop) -> Stop:
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop sequences")
    return value


def _check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    for key, bias in (value or {}).items():
        if not -100 <= bias <= 100:
            raise ValueError(f"the bias of token {key} must be between -100 and 100")
    return value


class _Sampling(_Body):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Int64 | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    _check_stop = field_validator("stop")(_check_stop)
    _check_logit_bias = field_validator("logit_bias")(_check_logit_bias)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "_Sampling":
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("Invalid value for 'stream_options': only allowed when 'stream' is true.",
                                 param="stream_options", code="invalid_value")
        return self


class ChatCompletionRequest(_Sampling):
    # the request as JSON when it was made on the server (a Responses turn), for backends that send it on
    _json: bytes = PrivateAttr(default=b"")
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # for reasoning models upstream (passed on; a model without reasoning has nothing to set)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _consistency(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("Invalid value for 'top_logprobs': it needs 'logprobs' set to true.",
                                 param="top_logprobs", code="invalid_value")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise InvalidRequest("Invalid value for 'tool_choice': it is only allowed when 'tools' are given.",
                                 param="tool_choice", code="invalid_value")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools and not any(
                t.function.name == self.tool_choice.function.name for t in self.tools):
            raise InvalidRequest(f"Invalid value for 'tool_choice': no function named "
                                 f"'{self.tool_choice.function.name}' is among 'tools'.", param="tool_choice",
                                 code="invalid_value")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        return _not_empty_list(value, "prompt")


class EmbeddingRequest(_Body):
    model: str | None = None
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if len(value) > 2048:
                raise ValueError("at most 2048 inputs per request")
        if isinstance(value, str) and not value:
            raise ValueError("input must not be an empty string")
        if isinstance(value, list) and any(isinstance(v, str) and not v for v in value):
            raise ValueError("input must not contain empty strings")
        return value


class ModerationTextPart(_Body):
    type: Literal["text"]
    text: str


class ModerationImagePart(_Body):
    type: Literal["image_url"]
    image_url: dict


class ModerationRequest(_Body):
    input: str | list[str] | list[ModerationTextPart | ModerationImagePart]
    model: str | None = None

    @field_validator("input")
    @classmethod
    def _input_bounded(cls, value: Any) -> Any:
        _not_empty_list(value, "input")
        items = value if isinstance(value, list) else [value]
        if len(items) > MODERATION_MAX_INPUTS:
            raise ValueError(f"at most {MODERATION_MAX_INPUTS} inputs per request")
        chars = sum(len(i) if isinstance(i, str) else len(getattr(i, "text", "") or "") for i in items)
        if chars > MODERATION_MAX_CHARS:
            raise ValueError(f"the inputs hold {chars} characters; at most {MODERATION_MAX_CHARS} per request")
        return value


def _not_empty_list(value: Any, name: str) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError(f"{name} must not be an empty list")
    return value


class AnalyzeTextRequest(BaseModel):
    """Azure AI Content Safety `text:analyze` (camelCase on the wire)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    text: str = Field(max_length=10_000)
    categories: list[Literal["Hate", "SelfHarm", "Sexual", "Violence"]] | None = None
    blocklist_names: list[str] | None = Field(default=None, alias="blocklistNames")
    halt_on_blocklist_hit: bool | None = Field(default=None, alias="haltOnBlocklistHit")
    output_type: Literal["FourSeverityLevels", "EightSeverityLevels"] = Field(default="FourSeverityLevels",
                                                                              alias="outputType")


class ShieldPromptRequest(BaseModel):
    """Azure AI Content Safety `text:shieldPrompt`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    user_prompt: str | None = Field(default=None, alias="userPrompt", max_length=10_000)
    documents: list[str] | None = Field(default=None, max_length=5)

    @field_validator("documents")
    @classmethod
    def _documents_bounded(cls, value: list[str] | None) -> list[str] | None:
        if value and sum(len(d) for d in value) > SHIELD_MAX_CHARS:
            raise ValueError(f"the documents may hold at most {SHIELD_MAX_CHARS} characters together")
        return value
