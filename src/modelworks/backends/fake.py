"""A scripted fake backend: deterministic, instant, no model. Public code for tests and demos.

It answers every generation with its configured reply (streamed word by word), counts tokens as words, and
embeds text into small deterministic vectors. With `chunk_delay_s` it paces its stream, which makes it useful
for testing disconnects, queues and timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import AsyncIterator

from modelworks.backends.base import (
    Backend, Capabilities, Delta, Embeddings, EmbeddingTask, Generation, GenerationTask, Usage,
)


class FakeBackend(Backend):
    capabilities = Capabilities(embeddings=True, tools=True, json_schema=True, logprobs=False)

    def __init__(self, name: str, reply: str = "Hello from the fake backend.", chunk_delay_s: float = 0.0,
                 dimensions: int = 8) -> None:
        super().__init__(name)
        self.reply = reply
        self.chunk_delay_s = chunk_delay_s
        self.dimensions = dimensions
        self.calls: list[GenerationTask] = []
        self.cancelled = 0

    def _words(self, task: GenerationTask) -> list[str]:
        words = self.reply.split(" ")
        limit = task.request.token_limit
        return words[:limit] if limit else words

    def _prompt_tokens(self, task: GenerationTask) -> int:
        req = task.request
        if task.is_chat:
            return sum(len(m.text().split()) for m in req.messages)
        prompt = req.prompt
        return len(prompt.split()) if isinstance(prompt, str) else len(prompt)

    def _finish(self, task: GenerationTask) -> str:
        limit = task.request.token_limit
        return "length" if limit and limit < len(self.reply.split(" ")) else "stop"

    async def generate(self, task: GenerationTask) -> Generation:
        self.calls.append(task)
        words = self._words(task)
        text = " ".join(words)
        choices = []
        for i in range(task.request.n):
            if task.is_chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                                "finish_reason": self._finish(task), "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": self._finish(task), "logprobs": None})
        usage = Usage(self._prompt_tokens(task), len(words) * task.request.n)
        return Generation(choices=choices, usage=usage)

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        self.calls.append(task)
        words = self._words(task)
        n = task.request.n
        try:
            if task.is_chat:
                yield Delta([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None} for i in range(n)])
            for j, word in enumerate(words):
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
                piece = word if j == 0 else " " + word
                if task.is_chat:
                    yield Delta([{"index": i, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}
                                 for i in range(n)])
                else:
                    yield Delta([{"index": i, "text": piece, "finish_reason": None, "logprobs": None}
                                 for i in range(n)])
            finish = self._finish(task)
            if task.is_chat:
                last = [{"index": i, "delta": {}, "finish_reason": finish, "logprobs": None} for i in range(n)]
            else:
                last = [{"index": i, "text": "", "finish_reason": finish, "logprobs": None} for i in range(n)]
            yield Delta(last, usage=Usage(self._prompt_tokens(task), len(words) * n))
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        vectors = [_pseudo_vector(str(item), self.dimensions) for item in task.inputs]
        tokens = sum(len(str(item).split()) for item in task.inputs)
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


def _pseudo_vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
