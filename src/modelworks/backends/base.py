"""The backend contract.

A backend has one required method, `generate`, answering a whole generation. Streaming (`stream`), embeddings
(`embed`) and `health` are optional: the defaults stream a finished generation as one delta, refuse embeddings and
report healthy. Results are plain data in the OpenAI shape (choices, deltas, usage); nothing here knows about HTTP,
SSE or JSON encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from modelworks.errors import Unsupported
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = True
    completions: bool = True
    embeddings: bool = False
    streaming: bool = True
    tools: bool = False
    json_schema: bool = False
    logprobs: bool = False
    multimodal: bool = False


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a prompt cache (part of prompt_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass(slots=True)
class GenerationTask:
    """What to generate. `request` is the validated client request; `model` the name the backend knows."""

    kind: Literal["chat", "text"]
    request: ChatCompletionRequest | CompletionRequest
    model: str
    body: bytes = b""  # the client's JSON body, already validated into `request`
    prompt_ids: list[int] | None = None  # the prompt as the model's tokens, once a backend has tokenized it
    trace_headers: list[tuple[bytes, bytes]] | None = None  # W3C trace context for an upstream, when tracing
    deadline: float | None = None  # time.monotonic() by which a whole answer is due (backends that honour it)

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"


@dataclass(slots=True)
class Generation:
    """A finished generation. `choices` are OpenAI choices: chat ones carry `message`, text ones `text`."""

    choices: list[dict[str, Any]]
    usage: Usage | None = None
    system_fingerprint: str | None = None


@dataclass(slots=True)
class Delta:
    """One streamed step. `choices` are OpenAI stream choices (chat: `delta`; text: `text`); may be empty."""

    choices: list[dict[str, Any]]
    usage: Usage | None = None


@dataclass(slots=True)
class EmbeddingTask:
    request: EmbeddingRequest
    model: str
    inputs: list[str] | list[list[int]] = field(default_factory=list)
    trace_headers: list[tuple[bytes, bytes]] | None = None
    deadline: float | None = None


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(slots=True)
class Health:
    ok: bool
    detail: str = ""
    engine: dict[str, Any] | None = None  # a local engine's load (sequences active and waiting, tokens/s)


class Backend(ABC):
    """Serves generations (and optionally embeddings) for deployments."""

    capabilities: Capabilities = Capabilities()
    honours_deadline = False  # True: `generate` and `embed` raise UpstreamTimeout by the task's deadline
    remote = False  # True: a service every replica shares (its health does not gate a replica's readiness)

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        """Load models, open connection pools. Called once, from the app's start-up."""

    async def close(self) -> None:
        """Release everything `start` took."""

    async def health(self) -> Health:
        return Health(ok=True)

    def engine_stats(self) -> dict[str, Any] | None:
        """A local engine's load (sequences, active, waiting, tokens_per_second, prompt tokens evaluated and
        cached), read by /readyz and /metrics; None for backends without one."""
        return None

    @abstractmethod
    async def generate(self, task: GenerationTask) -> Generation:
        """Generate the whole answer."""

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        """Generate step by step. Closing the iterator early must stop the work behind it."""
        result = await self.generate(task)
        yield Delta(choices=[as_delta(c, task.is_chat) for c in result.choices], usage=result.usage)

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        raise Unsupported(f"The model '{task.model}' does not serve embeddings.", param="model")

    async def count_prompt_tokens(self, task: GenerationTask) -> int | None:
        """The prompt's tokens by the model's own tokenizer, when the backend has it (quotas charge them).
        Counting grows with the prompt: a backend that counts does it off the event loop."""
        return None


def as_delta(choice: dict[str, Any], chat: bool) -> dict[str, Any]:
    if not chat:
        return choice
    message = choice.get("message") or {}
    delta = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [dict(tc, index=i) for i, tc in enumerate(message["tool_calls"])]
    return {"index": choice["index"], "delta": delta, "finish_reason": choice.get("finish_reason"),
            "logprobs": choice.get("logprobs")}
