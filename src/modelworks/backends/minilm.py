"""Embedded sentence embeddings (all-MiniLM-L6-v2, 384 dimensions) computed in a worker thread."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelworks.backends.admission import Admission
from modelworks.backends.base import Backend, Capabilities, Embeddings, EmbeddingTask, GenerationTask, Health
from modelworks.errors import InvalidRequest, Unsupported
from modelworks.settings import EmbeddedEmbeddingsBackend

log = logging.getLogger(__name__)


class MiniLMBackend(Backend):
    capabilities = Capabilities(chat=False, completions=False, embeddings=True, streaming=False)

    def __init__(self, name: str, spec: EmbeddedEmbeddingsBackend, cache_dir: Path) -> None:
        super().__init__(name)
        self.spec = spec
        self.cache_dir = cache_dir
        self.model = None
        self.executor: ThreadPoolExecutor | None = None
        self.admission: Admission | None = None

    async def start(self) -> None:
        from modelworks.model_files import resolve_model_source

        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{self.name}",
                                           initializer=_lower_priority, initargs=(self.spec.nice,))
        model_dir = resolve_model_source(self.spec.model, self.cache_dir)
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(self.executor, load_model, self.spec, model_dir, self.cache_dir)
        log.info("embeddings backend %s runs %s", self.name, self.model.runtime)
        self.admission = Admission(self.name, [self.model], self.spec.max_queue)

    async def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> Health:
        return Health(ok=self.model is not None, detail=self.model.runtime if self.model else "loading")

    async def generate(self, task: GenerationTask):
        raise Unsupported(f"The model '{task.model}' serves embeddings only.", param="model")

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        texts = task.inputs
        if texts and not isinstance(texts[0], str):
            raise InvalidRequest("This embedding model takes text input, not token arrays.", param="input")
        async with self.admission.slot() as model:
            loop = asyncio.get_running_loop()
            vectors, tokens = await loop.run_in_executor(self.executor, _encode, model, texts)
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


def load_model(spec: EmbeddedEmbeddingsBackend, model_dir: Path, cache_dir: Path):
    if spec.runtime == "numpy":
        from modelworks.backends.minilm_model import MiniLM

        return MiniLM(model_dir, spec.max_batch)
    from modelworks.backends.minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(model_dir, spec.max_batch, threads=spec.threads, quantize=spec.quantize, cache_dir=cache_dir)


def _lower_priority(nice: int) -> None:
    """The encoder's thread yields the cores to the LLM engine's threads when both want them: llama.cpp's threads
    meet at a barrier after every operation, so a core taken from one of them stalls them all (measured in
    bench/engines.py: one LLM stream kept 0.29 of its speed beside back-to-back embeddings at equal priority)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):  # not on this platform, or not allowed: equal priority
            pass


def _encode(model, texts: list[str]) -> tuple[list[list[float]], int]:
    vectors, tokens = model.encode(texts)
    return vectors.tolist(), tokens  # in the worker: 2,048 vectors take milliseconds to convert
