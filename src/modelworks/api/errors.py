"""The one place where exceptions become the OpenAI (or Azure) error envelope. No stack traces leave here."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import exc as store_errors

from modelworks.errors import ModelworksError, Unavailable, UpstreamError

log = logging.getLogger("modelworks.errors")

_store_logged = [0.0]


def _store_unreachable(exc: BaseException) -> bool:
    """The control-plane store out of reach (PostgreSQL or PgBouncer down, a connection dropped, the pool
    exhausted, SQLite locked past its timeout): a 503 the client retries, not a 500. Anything else the store
    raises (a missing table, a syntax error, a constraint) stays a 500 with its traceback in the log."""
    if isinstance(exc, (store_errors.TimeoutError, store_errors.DisconnectionError)):
        return True
    if not isinstance(exc, (store_errors.OperationalError, store_errors.InterfaceError)):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    state = getattr(orig, "sqlstate", None)
    if state is None:  # psycopg: a connection that failed or broke has no SQLSTATE
        return True
    return state[:2] in ("08", "53") or state.startswith("57P")  # connection, resources, shutting down


OPENAI = "openai"        # /v1: the OpenAI envelope and codes
AZURE_V1 = "azure_v1"    # /openai/v1: the OpenAI envelope with Azure's codes
AZURE = "azure"          # /openai/deployments/..., /openai/models: Azure's envelope (no null fields) and codes


def envelope(exc: BaseException, *, dialect: str = OPENAI) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Return (status, body, headers) for any exception."""
    if isinstance(exc, UpstreamError) and exc.body is not None and _is_envelope(exc.body):
        return exc.status, exc.body, exc.headers
    if isinstance(exc, ModelworksError):
        code = exc.azure_code if dialect != OPENAI and exc.azure_code else exc.code
        error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": code}
        inner = getattr(exc, "inner", None)
        if inner is not None:  # content filtering: clients read `innererror.content_filter_result`
            error["status"] = exc.status
            error["innererror"] = inner
        if dialect == AZURE:  # Azure's schema types `param` and `code` as strings: leave out what is unknown
            error = {k: v for k, v in error.items() if v is not None}
        return exc.status, {"error": error}, exc.headers
    if _store_unreachable(exc):
        now = time.monotonic()
        if now - _store_logged[0] > 10:
            _store_logged[0] = now
            log.error("the control-plane store cannot be reached (answering 503 meanwhile): %s",
                      str(exc).splitlines()[0])
        return envelope(Unavailable("The service cannot reach its store right now; retry shortly.",
                                    headers={"retry-after": "1"}), dialect=dialect)
    log.error("unhandled error", exc_info=exc)
    body = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                      "type": "server_error", "param": None, "code": "internal_error"}}
    return 500, body, {}


def _is_envelope(body: dict) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str)
