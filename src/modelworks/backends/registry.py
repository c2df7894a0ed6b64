"""Build backends from settings. Heavy runtimes (llama.cpp, the embedding model) are imported only when used."""

from __future__ import annotations

import os

from modelworks.backends.base import Backend
from modelworks.errors import ConfigError
from modelworks.settings import (
    AzureOpenAIUpstreamBackend, BackendSettings, EmbeddedEmbeddingsBackend, FakeBackend, LlamaCppBackend,
    OpenAIUpstreamBackend, Settings,
)


def build_backend(name: str, spec: BackendSettings, settings: Settings) -> Backend:
    if isinstance(spec, FakeBackend):
        from modelworks.backends.fake import FakeBackend as Fake

        return Fake(name, reply=spec.reply, chunk_delay_s=spec.chunk_delay_s, dimensions=spec.dimensions)
    if isinstance(spec, LlamaCppBackend):
        from modelworks.backends.llama import LlamaBackend

        return LlamaBackend(name, spec, settings.model_cache_path)
    if isinstance(spec, EmbeddedEmbeddingsBackend):
        from modelworks.backends.minilm import MiniLMBackend

        return MiniLMBackend(name, spec, settings.model_cache_path)
    if isinstance(spec, OpenAIUpstreamBackend):
        from modelworks.backends.openai_upstream import OpenAIUpstream

        return OpenAIUpstream(name, spec, api_key=_key(name, spec.api_key, spec.api_key_env))
    if isinstance(spec, AzureOpenAIUpstreamBackend):
        from modelworks.backends.azure_upstream import AzureOpenAIUpstream

        return AzureOpenAIUpstream(name, spec, api_key=_key(name, spec.api_key, spec.api_key_env))
    raise ConfigError(f"backends.{name}: unknown backend type")


def _key(name: str, literal: str | None, env: str | None) -> str | None:
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"backends.{name}.api_key_env: the environment variable {env} is not set")
        return value
    return literal
