"""The one place where exceptions become the OpenAI (or Azure) error envelope. No stack traces leave here."""

from __future__ import annotations

import logging
from typing import Any

from modelworks.errors import ModelworksError, UpstreamError

log = logging.getLogger("modelworks.errors")


def envelope(exc: BaseException, *, azure: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Return (status, body, headers) for any exception."""
    if isinstance(exc, UpstreamError) and exc.body is not None and _is_envelope(exc.body):
        return exc.status, exc.body, exc.headers
    if isinstance(exc, ModelworksError):
        code = (exc.azure_code if azure and exc.azure_code else exc.code)
        body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": code}}
        return exc.status, body, exc.headers
    log.error("unhandled error", exc_info=exc)
    body = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                      "type": "server_error", "param": None, "code": "internal_error"}}
    return 500, body, {}


def _is_envelope(body: dict) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str)
