"""The one exception tree. Every failure a client can see is one of these.

`modelworks.api.errors` is the single place that renders them to the OpenAI (or Azure) error envelope.
"""

from __future__ import annotations

import math


DRAIN_CUT = "modelworks: drained"  # the cancel message of work cut at a stopping server's drain deadline


class ModelworksError(Exception):
    """Base of every error the API may answer with."""

    status = 500
    type = "server_error"
    code: str | None = None
    azure_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(ModelworksError):
    status = 400
    type = "invalid_request_error"


class Unsupported(InvalidRequest):
    """The request is well formed but the serving backend cannot do it (tools on the embedded model, say)."""

    code = "unsupported_parameter"


class MissingApiVersion(InvalidRequest):
    code = "missing_api_version"


class Unauthorized(ModelworksError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    azure_code = "401"


class Forbidden(ModelworksError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    azure_code = "403"


class NotFound(ModelworksError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    azure_code = "DeploymentNotFound"


class Conflict(ModelworksError):
    """The resource's state forbids the change (an archived project, a project that is not empty): 409."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class BodyTooLarge(ModelworksError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ModelworksError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RequestTimeout(InvalidRequest):
    """The request's head or body did not arrive in time (answered by the connection, before any route)."""
    status = 408
    code = "request_timeout"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class Overloaded(ModelworksError):
    """A bounded queue is full: retry later (429 with retry-after)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    azure_code = "429"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, headers: dict[str, str] | None = None,
                 **kw) -> None:
        self.retry_after_s = retry_after_s
        seconds = max(1, min(60, math.ceil(retry_after_s)))  # clients honour values up to 60 s
        headers = {**(headers or {}), "retry-after": str(seconds), "retry-after-ms": str(int(seconds * 1000))}
        super().__init__(message, headers=headers, **kw)


class UpstreamRateLimited(Overloaded):
    """An upstream answered 429: that backend is cooled for its retry-after, and another one may answer."""


class RateLimited(Overloaded):
    """A quota (tokens or requests per minute) is spent for now."""


class InsufficientQuota(ModelworksError):
    """A project's monthly budget is spent: retrying will not help (`x-should-retry: false`)."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kw) -> None:
        super().__init__(message, headers={"x-should-retry": "false"}, **kw)


class ContentFiltered(InvalidRequest):
    """The prompt was blocked by the deployment's content filter policy (Azure: 400 `content_filter`)."""

    code = "content_filter"
    azure_code = "content_filter"

    def __init__(self, results: dict, **kw) -> None:
        super().__init__("The response was filtered due to the prompt triggering Azure OpenAI's content management "
                         "policy. Please modify your prompt and retry. To learn more about our content filtering "
                         "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                         param="prompt", **kw)
        self.inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results}


class UpstreamError(ModelworksError):
    """An upstream backend failed or answered with an error we pass on."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, status: int = 502, body: dict | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.body = body


class Unavailable(ModelworksError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class TooManyConnections(Unavailable):
    code = "too_many_connections"


class UpstreamTimeout(Unavailable):
    """A backend did not answer by the deadline it was given."""


class ConfigError(Exception):
    """The configuration is invalid; raised at start, never during a request."""
