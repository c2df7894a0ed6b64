"""`create_app(settings)`: builds everything; nothing happens at import time. Models load at start-up."""

from __future__ import annotations

import asyncio
import logging
import time

from modelworks.api.admin import AdminHandlers
from modelworks.api.drain import Drain, draining
from modelworks.api.errors import AZURE, AZURE_V1, OPENAI, envelope
from modelworks.api.http import Endpoint, JSONResult, new_request_id, send_json
from modelworks.api.content_safety import ContentSafetyHandlers
from modelworks.api.batches import BatchHandlers
from modelworks.api.files import FilesHandlers
from modelworks.api.vector_stores import VectorStoreHandlers
from modelworks.api.moderation import ModerationHandlers
from modelworks.api.request import Request
from modelworks.api.router import Router
from modelworks.api.routes import Handlers
from modelworks.backends.base import Backend
from modelworks.backends.registry import build_backend
from modelworks.catalog import Catalog
from modelworks.batches.priority import Interactive
from modelworks.errors import NotFound
from modelworks.files.service import build_files
from modelworks.control.plane import ControlPlane
from modelworks.policies.budget import BudgetPolicy
from modelworks.policies.chain import PolicyChain
from modelworks.metrics import ServiceMetrics
from modelworks.policies.metering import MeteringPolicy
from modelworks.policies.metrics import MetricsPolicy
from modelworks.policies.tracing import TracingPolicy
from modelworks.policies.quota import QuotaPolicy
from modelworks.policies.safety import ProjectBlocklists, SafetyPolicy
from modelworks.quota.limiter import build_limiter
from modelworks.routing.health import HealthMonitor
from modelworks.routing.pool import Members
from modelworks.service import Gateway
from modelworks.settings import Settings

log = logging.getLogger("modelworks")


class ModelworksApp:
    """The ASGI application: lifespan (start and stop backends) and HTTP routing."""

    def __init__(self, router: Router, backends: dict[str, Backend], gateway: Gateway, control: ControlPlane,
                 catalog: Catalog, health: HealthMonitor, drain: Drain | None = None) -> None:
        self.router = router
        self.backends = backends
        self.gateway = gateway
        self.control = control
        self.catalog = catalog
        self.health = health
        self.closers: list = []
        self.loops: list = []  # coroutine functions run from start-up until shutdown
        self.starters: list = []  # coroutine functions awaited at start-up, after the control plane
        self.started: list = []  # functions called once start-up is complete, before serving
        self._loop_tasks: list[asyncio.Task] = []
        self.drain = drain or Drain(20.0)
        self.always_served = {"/healthz", "/readyz"}  # answered while draining (readiness says so)

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            try:
                endpoint, params = self.router.match(scope["method"], path)
            except NotFound as exc:
                await _refuse(send, path, exc)
                return
            drain = self.drain
            if drain.draining and path not in self.always_served:
                await _refuse(send, path, draining())
                return
            task = asyncio.current_task()
            drain.enter(task)
            scope["modelworks.drain"] = drain
            started = False

            async def sending(message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    if drain.draining:  # the client's next request opens a connection the balancer sends elsewhere
                        message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
                await send(message)

            try:
                try:
                    await endpoint(scope, receive, sending, params)
                except asyncio.CancelledError:
                    if not drain.was_cut(task):
                        raise
                    task.uncancel()
                if not started and drain.was_cut(task):  # cut by the drain before any answer (any endpoint kind)
                    await _refuse(send, path, draining())
            finally:
                drain.leave(task)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        unique = list({id(b): b for b in self.backends.values()}.values())
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.control.start()
                    for start in self.starters:
                        await start()
                    await self.catalog.reload()
                    self.catalog.start()
                    await asyncio.gather(*(b.start() for b in unique))
                    self.health.start()
                    self._loop_tasks = [asyncio.create_task(_supervised(loop)) for loop in self.loops]
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                for started in self.started:
                    started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._loop_tasks:
                    task.cancel()
                if self._loop_tasks:  # they give back what they held (batch lines) before the store closes
                    await asyncio.wait(self._loop_tasks, timeout=5)
                # each step bounded: a store or Redis that went away first (compose stops everything at once)
                # must not keep the process past its grace period; what is left stays in the write-ahead logs
                deadline = asyncio.get_running_loop().time() + SHUTDOWN_S
                await _bounded("the health checks", self.health.close(), deadline)
                await _bounded("the catalog", self.catalog.close(), deadline)
                for close in self.closers:
                    await _bounded(getattr(close, "__qualname__", "a closer"), close(), deadline)
                await _bounded("the backends", asyncio.gather(*(b.close() for b in unique), return_exceptions=True),
                               deadline)
                # the store's own budget: a dead Redis above must not leave it none for the last flushes
                await _bounded("the control plane (store)", self.control.close(),
                               asyncio.get_running_loop().time() + STORE_SHUTDOWN_S)
                await send({"type": "lifespan.shutdown.complete"})
                return


# After the drain (and up to 5 s for cut work to end, 5 s for uvicorn's connections, 5 s for the loops): 5 s for
# the limiter, the backends and the other closers, then 10 s for the store. At most 30 s past the drain in all,
# when every service is unreachable; well under a second when they answer.
SHUTDOWN_S = 5.0
STORE_SHUTDOWN_S = 10.0


async def _bounded(what: str, step, deadline: float) -> None:
    try:
        await asyncio.wait_for(step, max(0.1, deadline - asyncio.get_running_loop().time()))
    except Exception:  # noqa: BLE001 - shutting down: say what did not finish, and go on
        log.warning("shutting down: %s did not finish (what it held stays in the write-ahead logs)", what,
                    exc_info=True)


async def _refuse(send, path: str, exc: Exception) -> None:
    """An error answered before any endpoint runs, in the dialect its path speaks."""
    dialect = AZURE_V1 if path.startswith("/openai/v1/") else AZURE if path.startswith("/openai/") else OPENAI
    status, body, headers = envelope(exc, dialect=dialect)
    await send_json(send, status, body, headers, new_request_id(), azure=dialect != OPENAI)


async def _supervised(loop) -> None:
    """A background loop, started again (after a pause) if it ever fails: one bad moment of the store must not end
    a replica's ingestion or batch work for good."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the loop goes on
            log.exception("a background loop failed; starting it again in 5 s")
            await asyncio.sleep(5)


def _tracing(settings: Settings):
    t = settings.tracing
    if not t.enabled:
        return None
    from modelworks.tracing import Tracing  # OpenTelemetry: imported only when tracing is on

    return Tracing(t.otlp_endpoint, t.service_name, t.sample_ratio, t.headers, t.export_delay_ms)


def _safety_loader(settings: Settings):
    """The built-in classifiers, loaded on first use (not at import); the MiniLM stage writes its merged weights
    and ONNX graph to the model cache once."""
    cache = settings.model_cache_path

    def load():
        from modelworks.safety.classifier import default_model

        return default_model(cache)
    return load


def create_app(settings: Settings, *, backends: dict[str, Backend] | None = None) -> ModelworksApp:
    """Build the ASGI app. `backends` replaces the configured ones (tests inject fakes this way)."""
    if backends is None:
        backends = {name: build_backend(name, spec, settings) for name, spec in settings.backends.items()}
    r = settings.routing
    metrics = ServiceMetrics()
    members = Members(backends, settings.backend_places,
                      {name: spec.weight for name, spec in settings.backends.items()})
    metrics.watch_backends(members)
    tracing = _tracing(settings)
    gateway = Gateway({}, created=int(time.time()),  # routes filled from the store at start-up
                      routing=r, metrics=metrics, tracing=tracing)
    control = ControlPlane(settings)
    catalog = Catalog(control.deployments, backends, gateway, members,
                      latency_aware=r.strategy == "latency")
    health = HealthMonitor(members, r.health_interval_s)
    limiter = build_limiter(settings.quota)
    blocklists = ProjectBlocklists(control.blocklists)
    safety_model = _safety_loader(settings)
    safety_policy = SafetyPolicy(settings.content_filter_policies, blocklists, control.content_log, gateway,
                                 model_loader=safety_model)
    policies = [control.auth, *([TracingPolicy(tracing)] if tracing is not None else []), BudgetPolicy(control.usage),
                QuotaPolicy(limiter, settings.quota.default_max_tokens, resolve=gateway.routes_get),
                safety_policy]
    interactive = Interactive()  # counts interactive calls, so that batch lines wait for quiet
    policies.append(interactive)
    if settings.metering.enabled:
        policies.append(MeteringPolicy(control.wal))
    if settings.metrics.enabled:
        policies.append(MetricsPolicy(metrics))
    chain = PolicyChain(policies)
    h = Handlers(gateway, chain, settings.server.max_body_bytes)
    agents = _responses_handlers(settings, control, h.calls, chain)
    files = build_files(control.db, settings, settings.data_path)
    vectors, ingestor = _vector_stores(settings, control, files, h.calls, gateway)
    agents.service.tools.file_search.vectors = vectors
    batches, batch_worker = _batches(settings, control, files, gateway, h, agents.service, interactive)
    batch_handlers = BatchHandlers(batches, chain, control.audit_writer, settings.server.max_body_bytes)
    vector_handlers = VectorStoreHandlers(vectors, chain, control.audit_writer, settings.server.max_body_bytes)
    moderation = ModerationHandlers(chain, safety_model, settings.server.max_body_bytes)
    safety = ContentSafetyHandlers(chain, safety_model, blocklists, settings.server.max_body_bytes)

    router = Router()
    router.add("/healthz", Endpoint(_healthz), ("GET",))
    drain = Drain(settings.server.drain_timeout_s)
    router.add("/readyz", Endpoint(_readyz(backends, gateway, drain)), ("GET",))
    if settings.metrics.enabled:
        router.add(settings.metrics.path, Endpoint(_metrics_endpoint(metrics)), ("GET",))
    for prefix, dialect in (("/v1", OPENAI), ("/openai/v1", AZURE_V1)):
        router.add(f"{prefix}/chat/completions", Endpoint(h.chat, dialect=dialect))
        router.add(f"{prefix}/completions", Endpoint(h.completions, dialect=dialect))
        router.add(f"{prefix}/embeddings", Endpoint(h.embeddings, dialect=dialect))
        router.add(f"{prefix}/moderations", Endpoint(moderation.create, dialect=dialect))
        router.add(f"{prefix}/models", Endpoint(h.list_models, dialect=dialect), ("GET",))
        router.add(f"{prefix}/models/{{model:path}}", Endpoint(h.get_model, dialect=dialect), ("GET",))
        _responses_routes(router, prefix, dialect, agents)
        _files_routes(router, prefix, dialect, FilesHandlers(files, chain, control.audit_writer))
        _vector_store_routes(router, prefix, dialect, vector_handlers)
        _batch_routes(router, prefix, dialect, batch_handlers)
    router.add("/openai/deployments/{deployment}/chat/completions", Endpoint(h.chat, dialect=AZURE))
    router.add("/openai/deployments/{deployment}/completions", Endpoint(h.completions, dialect=AZURE))
    router.add("/openai/deployments/{deployment}/embeddings", Endpoint(h.embeddings, dialect=AZURE))
    router.add("/contentsafety/text:analyze", Endpoint(safety.analyze, dialect=AZURE), ("POST",))
    router.add("/contentsafety/text:shieldPrompt", Endpoint(safety.shield_prompt, dialect=AZURE), ("POST",))
    router.add("/openai/deployments/{deployment}/models", Endpoint(h.list_models, dialect=AZURE), ("GET",))
    router.add("/openai/models", Endpoint(h.list_models, dialect=AZURE), ("GET",))
    router.add("/openai/models/{model:path}", Endpoint(h.get_model, dialect=AZURE), ("GET",))
    _responses_routes(router, "/openai", AZURE, agents)  # Azure's resource-level dated paths
    _files_routes(router, "/openai", AZURE, FilesHandlers(files, chain, control.audit_writer))
    _batch_routes(router, "/openai", AZURE, batch_handlers)
    _admin_routes(router, AdminHandlers(control, catalog, settings.server.max_body_bytes))
    app = ModelworksApp(router, backends, gateway, control, catalog, health, drain)
    agents.service.drain = drain
    batch_worker.drain = drain
    ingestor.drain = drain
    if settings.metrics.enabled:
        app.always_served.add(settings.metrics.path)
    if settings.portal.enabled:
        from modelworks.portal.routes import mount_portal

        mount_portal(router, app, settings, control, gateway, members, catalog, h)
    app.closers.append(limiter.close)
    purge_every = settings.responses.purge_interval_s
    app.loops.append(lambda: agents.service.maintain(purge_every, control.leases))
    app.loops.append(lambda: files.maintain(settings.files.purge_interval_s))
    app.loops.append(ingestor.run)
    app.loops.append(batch_worker.run)
    app.loops.append(lambda: vectors.maintain(settings.vector_stores.purge_interval_s, control.leases))
    journal = agents.service.journal
    app.starters.append(lambda: _start_journal(journal))
    if any(d.content_filter for d in settings.deployments.values()):
        app.starters.append(safety_policy.warm)  # the classifiers' first use would otherwise wait seconds
    app.closers.insert(0, journal.close)  # before the store goes
    if tracing is not None:
        app.closers.append(lambda: asyncio.to_thread(tracing.close))
    return app


def _responses_handlers(settings: Settings, control: ControlPlane, calls, chain: PolicyChain):
    import uuid
    from datetime import timedelta

    from modelworks.api.responses import ResponsesHandlers
    from modelworks.responses.conversations import ConversationsService
    from modelworks.responses.service import ResponsesService
    from modelworks.responses.store import ResponseStore

    from modelworks.responses.mcp import McpGateway
    from modelworks.responses.mcp_policy import McpServerPolicy

    from modelworks.responses.journal import ResponseJournal

    store = ResponseStore(control.db, timedelta(days=settings.responses.retention_days))
    mcp = McpGateway(McpServerPolicy(control.projects))
    journal = ResponseJournal(store, settings.data_path / "responses-wal", settings.responses.flush_seconds)
    service = ResponsesService(calls, store, journal, node=uuid.uuid4().hex[:16], mcp=mcp,
                               max_tool_rounds=settings.responses.max_tool_calls)
    return ResponsesHandlers(service, ConversationsService(store), chain, settings.server.max_body_bytes)


async def _start_journal(journal) -> None:
    await asyncio.to_thread(journal.open)  # what a killed process left is stored before anything is served
    journal.start()


def _responses_routes(router: Router, prefix: str, dialect: str, r) -> None:
    def add(path: str, handler, method: str) -> None:
        router.add(f"{prefix}{path}", Endpoint(handler, dialect=dialect), (method,))

    add("/responses", r.create, "POST")
    add("/responses/input_tokens", r.input_tokens, "POST")
    add("/responses/{response_id}", r.retrieve, "GET")
    add("/responses/{response_id}", r.delete, "DELETE")
    add("/responses/{response_id}/cancel", r.cancel, "POST")
    add("/responses/{response_id}/input_items", r.input_items, "GET")
    add("/conversations", r.create_conversation, "POST")
    add("/conversations/{conversation_id}", r.get_conversation, "GET")
    add("/conversations/{conversation_id}", r.update_conversation, "POST")
    add("/conversations/{conversation_id}", r.delete_conversation, "DELETE")
    add("/conversations/{conversation_id}/items", r.list_items, "GET")
    add("/conversations/{conversation_id}/items", r.add_items, "POST")
    add("/conversations/{conversation_id}/items/{item_id}", r.get_item, "GET")
    add("/conversations/{conversation_id}/items/{item_id}", r.delete_item, "DELETE")


def _vector_stores(settings: Settings, control: ControlPlane, files, calls, gateway: Gateway):
    from modelworks.vectors.ingest import Ingestor
    from modelworks.vectors.service import VectorStoresService, default_embedding_deployment
    from modelworks.vectors.store import VectorStoreDB

    v = settings.vector_stores
    service = VectorStoresService(VectorStoreDB(control.db), files, calls, gateway,
                                  lambda: v.embedding_deployment or default_embedding_deployment(gateway),
                                  v.max_cached_indexes)
    files.on_delete.append(service.store.detach_everywhere)
    return service, Ingestor(service, control.keys, v.ingest_lease_s)


def _batches(settings: Settings, control: ControlPlane, files, gateway: Gateway, handlers, responses,
             interactive):
    from modelworks.batches.service import BatchService
    from modelworks.batches.store import BatchDB
    from modelworks.batches.worker import BatchWorker

    service = BatchService(BatchDB(control.db), files, gateway)
    worker = BatchWorker(service, control.keys, handlers, responses, interactive,
                         concurrency=settings.batches.concurrency, lease_s=settings.batches.lease_s)
    return service, worker


def _batch_routes(router: Router, prefix: str, dialect: str, b) -> None:
    router.add(f"{prefix}/batches", Endpoint(b.create, dialect=dialect), ("POST",))
    router.add(f"{prefix}/batches", Endpoint(b.list, dialect=dialect), ("GET",))
    router.add(f"{prefix}/batches/{{batch_id}}", Endpoint(b.retrieve, dialect=dialect), ("GET",))
    router.add(f"{prefix}/batches/{{batch_id}}/cancel", Endpoint(b.cancel, dialect=dialect), ("POST",))


def _vector_store_routes(router: Router, prefix: str, dialect: str, v) -> None:
    def add(path: str, handler, method: str) -> None:
        router.add(f"{prefix}/vector_stores{path}", Endpoint(handler, dialect=dialect), (method,))

    add("", v.create, "POST")
    add("", v.list, "GET")
    add("/{vector_store_id}", v.retrieve, "GET")
    add("/{vector_store_id}", v.update, "POST")
    add("/{vector_store_id}", v.delete, "DELETE")
    add("/{vector_store_id}/search", v.search, "POST")
    add("/{vector_store_id}/files", v.add_file, "POST")
    add("/{vector_store_id}/files", v.list_files, "GET")
    add("/{vector_store_id}/files/{file_id}", v.get_file, "GET")
    add("/{vector_store_id}/files/{file_id}", v.update_file, "POST")
    add("/{vector_store_id}/files/{file_id}", v.delete_file, "DELETE")
    add("/{vector_store_id}/files/{file_id}/content", v.file_content, "GET")
    add("/{vector_store_id}/file_batches", v.create_batch, "POST")
    add("/{vector_store_id}/file_batches/{batch_id}", v.get_batch, "GET")
    add("/{vector_store_id}/file_batches/{batch_id}/cancel", v.cancel_batch, "POST")
    add("/{vector_store_id}/file_batches/{batch_id}/files", v.batch_files, "GET")


def _files_routes(router: Router, prefix: str, dialect: str, f) -> None:
    router.add(f"{prefix}/files", Endpoint(f.create, dialect=dialect), ("POST",))
    router.add(f"{prefix}/files", Endpoint(f.list, dialect=dialect), ("GET",))
    router.add(f"{prefix}/files/{{file_id}}", Endpoint(f.retrieve, dialect=dialect), ("GET",))
    router.add(f"{prefix}/files/{{file_id}}", Endpoint(f.delete, dialect=dialect), ("DELETE",))
    router.add(f"{prefix}/files/{{file_id}}/content", Endpoint(f.content, dialect=dialect), ("GET",))


def _admin_routes(router: Router, a: AdminHandlers) -> None:
    from modelworks.api.admin_blocklists import BlocklistHandlers
    from modelworks.api.admin_openapi import openapi_endpoint

    router.add("/admin/v1/openapi.json", Endpoint(openapi_endpoint), ("GET",))
    router.add("/admin/v1/projects", Endpoint(a.list_projects), ("GET",))
    router.add("/admin/v1/projects", Endpoint(a.create_project), ("POST",))
    router.add("/admin/v1/projects/{project_id}", Endpoint(a.get_project), ("GET",))
    router.add("/admin/v1/projects/{project_id}", Endpoint(a.update_project), ("PATCH",))
    router.add("/admin/v1/projects/{project_id}", Endpoint(a.delete_project), ("DELETE",))
    router.add("/admin/v1/projects/{project_id}/archive", Endpoint(a.archive_project), ("POST",))
    router.add("/admin/v1/keys", Endpoint(a.list_keys), ("GET",))
    router.add("/admin/v1/keys", Endpoint(a.create_key), ("POST",))
    router.add("/admin/v1/keys/{key_id}", Endpoint(a.get_key), ("GET",))
    router.add("/admin/v1/keys/{key_id}", Endpoint(a.revoke_key), ("DELETE",))
    router.add("/admin/v1/deployments", Endpoint(a.list_deployments), ("GET",))
    router.add("/admin/v1/deployments", Endpoint(a.create_deployment), ("POST",))
    router.add("/admin/v1/deployments/{name}", Endpoint(a.get_deployment), ("GET",))
    router.add("/admin/v1/deployments/{name}", Endpoint(a.update_deployment), ("PATCH",))
    router.add("/admin/v1/deployments/{name}", Endpoint(a.delete_deployment), ("DELETE",))
    router.add("/admin/v1/usage", Endpoint(a.usage), ("GET",))
    b = BlocklistHandlers(a)
    router.add("/admin/v1/blocklists", Endpoint(b.list), ("GET",))
    router.add("/admin/v1/blocklists", Endpoint(b.create), ("POST",))
    router.add("/admin/v1/blocklists/{blocklist_id}", Endpoint(b.get), ("GET",))
    router.add("/admin/v1/blocklists/{blocklist_id}", Endpoint(b.delete), ("DELETE",))
    router.add("/admin/v1/blocklists/{blocklist_id}/items", Endpoint(b.list_items), ("GET",))
    router.add("/admin/v1/blocklists/{blocklist_id}/items", Endpoint(b.add_items), ("POST",))
    router.add("/admin/v1/blocklists/{blocklist_id}/items/{item_id}", Endpoint(b.remove_item), ("DELETE",))
    router.add("/admin/v1/content-log", Endpoint(a.list_content_log), ("GET",))
    router.add("/admin/v1/audit", Endpoint(a.list_audit), ("GET",))
    router.add("/admin/v1/audit/verify", Endpoint(a.verify_audit), ("GET",))
    router.add("/admin/v1/audit/export", Endpoint(a.export_audit), ("GET",))


async def _healthz(request: Request) -> JSONResult:
    return JSONResult({"status": "ok"})


def _metrics_endpoint(metrics: ServiceMetrics):
    async def metrics_text(request: Request) -> JSONResult:
        return JSONResult(metrics.registry.render().encode(),
                          headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})
    return metrics_text


def _readyz(backends: dict[str, Backend], gateway: Gateway, drain: Drain):
    """Whether this replica can serve: not while it drains, nor while a backend of its own (an embedded model)
    fails its health check. Remote backends (upstreams every replica shares) are reported but do not gate it: a
    balancer or Kubernetes that took every replica out when a shared upstream fails would turn one deployment's
    outage into all of them (each still answers 503 for the deployment meanwhile). The answer details each backend
    and each deployment; "degraded" (still 200) names a deployment that has no healthy backend."""
    async def readyz(request: Request) -> JSONResult:
        if drain.draining:
            return JSONResult({"status": "draining", "in_flight": len(drain.tasks) - 1}, status=503)
        results = await asyncio.gather(*(b.health() for b in backends.values()))
        detail = {name: {"ok": r.ok, "detail": r.detail, **({"engine": r.engine} if r.engine else {})}
                  for name, r in zip(backends, results)}
        deployments = {}
        for name, route in gateway.routes.items():
            deployments[name] = any(detail.get(m.name, {}).get("ok") for m in route.pool.members)
        own = all(r.ok for b, r in zip(backends.values(), results) if not b.remote)
        status = "not_ready" if not own else "ready" if all(deployments.values()) else "degraded"
        return JSONResult({"status": status, "backends": detail, "deployments": deployments},
                          status=200 if own else 503)
    return readyz

