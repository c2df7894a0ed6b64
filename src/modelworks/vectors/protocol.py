"""The request bodies of the Vector Stores API, validated (a bad field is a 400 naming it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelworks.responses.protocol import Metadata, check_metadata
from modelworks.vectors.filters import check_attributes, compile_filter

MAX_FILE_IDS = 500
MAX_BATCH_FILES = 2000


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StaticChunking(_Body):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> "StaticChunking":
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class ChunkingStrategy(_Body):
    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    @model_validator(mode="after")
    def _static(self) -> "ChunkingStrategy":
        if self.type == "static" and self.static is None:
            raise ValueError("a 'static' chunking strategy needs 'static': {max_chunk_size_tokens, "
                             "chunk_overlap_tokens}")
        if self.type == "auto" and self.static is not None:
            raise ValueError("'static' is only for the 'static' chunking strategy")
        return self

    def resolved(self) -> dict:
        """What the file object reports: `static` with its sizes (auto: 800 and 400)."""
        if self.type == "static":
            return {"type": "static", "static": self.static.model_dump()}
        return {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}


class ExpiresAfter(_Body):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


def _file_ids(value: list[str] | None) -> list[str] | None:
    if value is None:
        return value
    if len(set(value)) != len(value):
        raise ValueError("each file id may appear once")
    for file_id in value:
        if not file_id or len(file_id) > 64:
            raise ValueError("file ids are 1 to 64 characters")
    return value


class CreateVectorStore(_Body):
    file_ids: list[str] | None = Field(default=None, max_length=MAX_FILE_IDS)
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata | None = None
    # Modelworks: the embeddings deployment that makes its vectors (default: the configured one)
    embedding_model: str | None = Field(default=None, max_length=100)

    _ids = field_validator("file_ids")(lambda cls, v: _file_ids(v))
    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))


class UpdateVectorStore(_Body):
    name: str | None = Field(default=None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: Metadata | None = None

    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))


class CreateVectorStoreFile(_Body):
    file_id: str = Field(min_length=1, max_length=64)
    chunking_strategy: ChunkingStrategy | None = None
    attributes: dict[str, Any] | None = None

    _attributes = field_validator("attributes")(lambda cls, v: check_attributes(v))


class CreateFileBatch(_Body):
    file_ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_FILES)
    files: list[CreateVectorStoreFile] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_FILES)
    chunking_strategy: ChunkingStrategy | None = None
    attributes: dict[str, Any] | None = None

    _ids = field_validator("file_ids")(lambda cls, v: _file_ids(v))
    _attributes = field_validator("attributes")(lambda cls, v: check_attributes(v))

    @model_validator(mode="after")
    def _one_list(self) -> "CreateFileBatch":
        if (self.file_ids is None) == (self.files is None):
            raise ValueError("give either 'file_ids' or 'files'")
        if self.files is not None:
            ids = [f.file_id for f in self.files]
            if len(set(ids)) != len(ids):
                raise ValueError("each file id may appear once")
        return self


class UpdateAttributes(_Body):
    attributes: dict[str, Any] | None

    _attributes = field_validator("attributes")(lambda cls, v: check_attributes(v))


class RankingOptions(_Body):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0, le=1)
    # what the Responses file_search tool sends too
    hybrid_search: dict[str, Any] | None = None


class SearchRequest(_Body):
    query: str | list[str]
    rewrite_query: bool = False
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None

    @field_validator("query")
    @classmethod
    def _query(cls, value):
        queries = [value] if isinstance(value, str) else value
        if not queries or any(not q.strip() for q in queries):
            raise ValueError("a query is a non-empty string (or a list of them)")
        if len(queries) > 10 or any(len(q) > 10_000 for q in queries):
            raise ValueError("at most 10 queries of at most 10,000 characters each")
        return value

    @field_validator("filters")
    @classmethod
    def _filters(cls, value):
        compile_filter(value)  # raises a 400 that names the part
        return value
