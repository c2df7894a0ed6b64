"""Tables of the control plane (SQLAlchemy 2). Changes go through Alembic migrations in `migrations/`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
    UniqueConstraint, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    monthly_token_cap: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    monthly_cost_cap: Mapped[float | None] = mapped_column(Float, nullable=True)
    soft_threshold: Mapped[float] = mapped_column(Float, default=0.8)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # "active" or "archived": an archived project keeps its usage and audit, and has no live keys
    status: Mapped[str] = mapped_column(String(20), default="active", server_default="active")
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # URL prefixes of the remote MCP servers its requests may reach; null: any public address
    mcp_servers: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    display: Mapped[str] = mapped_column(String(20))  # the key's first characters, to recognise it
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PortalSession(Base):
    """A signed-in portal session: the browser holds a random id (in an HttpOnly cookie), the store its hash and
    the key it was opened with (the key itself is never kept)."""

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))  # the form token of this session (useless without its cookie)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the idle timeout counts from here
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user_agent: Mapped[str] = mapped_column(String(200), default="")
    # the one-time tokens of the forms sent in this session that must not act twice (a key's creation, whose
    # answer shows its secret: a reload sends the form again); JSON, the last few
    used_forms: Mapped[str] = mapped_column(Text, default="[]")


class DeploymentRow(Base):
    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    backends: Mapped[list] = mapped_column(JSON)
    deployment_type: Mapped[str] = mapped_column(String(40), default="GlobalStandard")
    region: Mapped[str | None] = mapped_column(String(40), nullable=True)
    data_zone: Mapped[str | None] = mapped_column(String(10), nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_filter_policy: Mapped[str | None] = mapped_column(String(100), nullable=True)
    price_input_per_1k: Mapped[float] = mapped_column(Float, default=0.0)
    price_output_per_1k: Mapped[float] = mapped_column(Float, default=0.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    owned_by: Mapped[str] = mapped_column(String(100), default="modelworks")
    spillover: Mapped[str | None] = mapped_column(String(100), nullable=True)
    source: Mapped[str] = mapped_column(String(10), default="api")  # "config" or "api"
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_project_at", "project_id", "at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # written by the node: replays are idempotent
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    project_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    deployment: Mapped[str] = mapped_column(String(100))
    backend: Mapped[str | None] = mapped_column(String(100), nullable=True)
    region: Mapped[str | None] = mapped_column(String(40), nullable=True)
    operation: Mapped[str] = mapped_column(String(40))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    filter_outcome: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # the content filter's explained decisions (detector, category, score, threshold, action, span), as JSON
    filter_decisions: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a Responses API model call
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a Batch API line's model call


class UsageDaily(Base):
    """Usage records summed by UTC day, project, key and deployment, kept in step with `usage_records` in the same
    transaction as each batch (a replayed record is not counted twice): the portal's usage screen reads this, not
    a million raw rows."""

    __tablename__ = "usage_daily"
    # a page of (day, key) or (day, deployment) groups is read in index order, stopping at the page's end
    __table_args__ = (Index("ix_usage_daily_day_key", "day", "key_id"),
                      Index("ix_usage_daily_day_deployment", "day", "deployment"))

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC
    project_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)  # '' for records without a key
    deployment: Mapped[str] = mapped_column(String(100), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)  # the sum: divided by requests when shown


class AuditEntry(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(40), nullable=True)  # key id, never the key
    project_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class BlocklistRow(Base):
    """A project's custom blocklist; content-filter policies name the lists they apply."""

    __tablename__ = "blocklists"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_blocklist_project_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlocklistItemRow(Base):
    __tablename__ = "blocklist_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    blocklist_id: Mapped[str] = mapped_column(ForeignKey("blocklists.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # term or regex
    value: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ContentLogEntry(Base):
    """Prompt and completion text, kept only for deployments whose content-filter policy opts in, and purged
    when `expires_at` passes."""

    __tablename__ = "content_log"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    project_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    deployment: Mapped[str] = mapped_column(String(100))
    filter_outcome: Mapped[str | None] = mapped_column(String(40), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)       # JSON: the prompt's parts as the backend saw them
    completion: Mapped[str] = mapped_column(Text)   # JSON: each choice's text as the client got it


RUNNING = "status IN ('queued', 'in_progress')"  # the partial index's condition (queries use it as written)


class ResponseRow(Base):
    """A stored response of the Responses API: its whole rendered object, and what chains and scopes it."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_running", "status", "updated_at",  # only what `fail_stale` looks at
                            sqlite_where=text(RUNNING), postgresql_where=text(RUNNING)),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(String(20))
    previous_response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    background: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the process running it (background)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[str] = mapped_column(Text)  # the Response object as JSON (its output items in it)
    input_items: Mapped[str] = mapped_column(Text, server_default="[]")  # JSON: its input items, in order


class ResponseEventRow(Base):
    """The stream events of a background response, kept so that a client can resume its stream anywhere."""

    __tablename__ = "response_events"

    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")


class ConversationItemRow(Base):
    """A conversation's items in order (`seq` grows with every item added, on any replica)."""

    __tablename__ = "conversation_items"
    __table_args__ = (Index("ix_conversation_items_order", "conversation_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[str] = mapped_column(Text)


class FileRow(Base):
    """An uploaded file of the Files API. Its bytes are in the local file store or in `file_parts`."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_project_order", "project_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)  # list order, on any replica
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(20), default="processed")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    storage: Mapped[str] = mapped_column(String(16))  # "local" or "database": where its bytes are


class FilePart(Base):
    """A file's bytes in the store (`files.storage: database`), in parts of at most 1 MiB."""

    __tablename__ = "file_parts"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VectorStoreRow(Base):
    """A vector store of a project: its files' chunks are searched together. `version` grows with every change
    of its chunks, so that each replica knows when its in-memory index is behind."""

    __tablename__ = "vector_stores"
    __table_args__ = (Index("ix_vector_stores_project_order", "project_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_after_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    embedding_deployment: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorStoreFileRow(Base):
    """A file in a vector store, and its ingestion: waiting or taken by a worker (`lease_owner` until
    `lease_until`), then `completed`, `failed` (with `last_error`) or `cancelled`."""

    __tablename__ = "vector_store_files"
    __table_args__ = (UniqueConstraint("vector_store_id", "file_id", name="uq_vector_store_files"),
                      Index("ix_vector_store_files_work", "status", "lease_until"),
                      Index("ix_vector_store_files_file", "file_id"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id", ondelete="CASCADE"))
    file_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # whose quota embeds it
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    filename: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {code, message}
    attributes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    chunking: Mapped[str] = mapped_column(Text)  # JSON: the chunking strategy object
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class VectorStoreFileBatchRow(Base):
    __tablename__ = "vector_store_file_batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)


class VectorChunkRow(Base):
    """A chunk of a file in a vector store: its text, its terms (for the full-text ranking, made once) and its
    vector (float32, little-endian). `seq` only grows: a replica loads what is new since the last it saw."""

    __tablename__ = "vector_chunks"
    __table_args__ = (Index("ix_vector_chunks_store_seq", "vector_store_id", "seq"),
                      Index("ix_vector_chunks_store_file", "vector_store_id", "file_id"),
                      {"sqlite_autoincrement": True})  # a seq is never given twice: replicas load by it

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id", ondelete="CASCADE"))
    file_id: Mapped[str] = mapped_column(String(64))
    idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    terms: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class BatchRow(Base):
    """A batch of the Batch API: its input, status and times; its lines are `batch_lines`. `lease_owner` holds
    the worker finishing it (writing its output files)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_project_order", "project_id", "seq"), Index("ix_batches_status", "status"),
                      {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # whose quota and budget run it
    endpoint: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    output_expires_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BatchLineRow(Base):
    """One request of a batch: waiting, taken by a worker (`lease_owner` until `lease_until`), or done with its
    output line (`ok`: in the output file, else the error file). A result is stored only by the worker holding
    the line's lease, in the statement that marks it done: each line is answered once."""

    __tablename__ = "batch_lines"
    __table_args__ = (UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
                      Index("ix_batch_lines_work", "status", "line"))

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512))
    body: Mapped[str] = mapped_column(Text)  # the request's JSON body
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending, running, done
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # the output line, JSON
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)


class LeaseRow(Base):
    """A named lease on periodic work that one replica at a time does (purges, ending stale runs): held by
    `owner` until `until`, renewed by its holder each round, taken over by another replica once it runs out."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
