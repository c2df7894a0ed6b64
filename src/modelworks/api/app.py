"""`create_app(settings)`: builds everything; nothing happens at import time. Models load at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelworks.api.http import Endpoint
from modelworks.api.routes import Handlers
from modelworks.backends.base import Backend
from modelworks.backends.registry import build_backend
from modelworks.keys import bootstrap_key
from modelworks.policies.auth import ApiKeyAuth
from modelworks.policies.chain import PolicyChain
from modelworks.service import Gateway, Route as DeploymentRoute
from modelworks.settings import Settings

log = logging.getLogger("modelworks")


def create_app(settings: Settings, *, backends: dict[str, Backend] | None = None,
               key_hashes: list[str] | None = None) -> Starlette:
    """Build the ASGI app. `backends` replaces the configured ones (tests inject fakes this way)."""
    if backends is None:
        backends = {name: build_backend(name, spec, settings) for name, spec in settings.backends.items()}
    routes = {
        name: DeploymentRoute(deployment=name, backend=backends[dep.backend], model=dep.model or name,
                              owned_by=dep.owned_by)
        for name, dep in settings.deployments.items()
    }
    gateway = Gateway(routes, created=int(time.time()))
    if key_hashes is None:
        key_hashes = [bootstrap_key(settings.api_key, settings.data_path).hash]
    chain = PolicyChain([ApiKeyAuth(key_hashes)])
    h = Handlers(gateway, chain, settings.server.max_body_bytes)

    def openai(path: str, handler, methods=("POST",)) -> Route:
        return Route(path, Endpoint(handler), methods=list(methods))

    def azure(path: str, handler, methods=("POST",)) -> Route:
        return Route(path, Endpoint(handler, azure=True), methods=list(methods))

    http_routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz(backends), methods=["GET"]),
    ]
    for prefix, make in (("/v1", openai), ("/openai/v1", azure)):
        http_routes += [
            make(f"{prefix}/chat/completions", h.chat),
            make(f"{prefix}/completions", h.completions),
            make(f"{prefix}/embeddings", h.embeddings),
            make(f"{prefix}/models", h.list_models, ("GET",)),
            make(f"{prefix}/models/{{model:path}}", h.get_model, ("GET",)),
        ]
    http_routes += [
        azure("/openai/deployments/{deployment}/chat/completions", h.chat),
        azure("/openai/deployments/{deployment}/completions", h.completions),
        azure("/openai/deployments/{deployment}/embeddings", h.embeddings),
        azure("/openai/deployments/{deployment}/models", h.list_models, ("GET",)),
        azure("/openai/models", h.list_models, ("GET",)),
        azure("/openai/models/{model:path}", h.get_model, ("GET",)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        unique = list({id(b): b for b in backends.values()}.values())
        await asyncio.gather(*(b.start() for b in unique))
        try:
            yield
        finally:
            await asyncio.gather(*(b.close() for b in unique), return_exceptions=True)

    app = Starlette(routes=http_routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_exception})
    app.state.gateway = gateway
    app.state.backends = backends
    return app


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _readyz(backends: dict[str, Backend]):
    async def readyz(request: Request) -> JSONResponse:
        results = await asyncio.gather(*(b.health() for b in backends.values()))
        detail = {name: {"ok": r.ok, "detail": r.detail} for name, r in zip(backends, results)}
        ready = all(r.ok for r in results)
        return JSONResponse({"status": "ready" if ready else "not_ready", "backends": detail},
                            status_code=200 if ready else 503)
    return readyz


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
        code = "unknown_url"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
