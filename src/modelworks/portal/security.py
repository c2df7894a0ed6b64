"""The portal's browser-facing defences: the session cookie, CSRF checks and the security headers.

- The cookie holds only the random session id: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's
  page sends it), `Path=/portal`, and `Secure` with the `__Host-` prefix when the portal is served over TLS.
- Every state-changing request (any method but GET and HEAD) must come from the portal's own origin (`Origin`, or
  `Referer` when a browser sends no `Origin`) and, once signed in, carry the session's CSRF token (the `csrf` form
  field or the `x-csrf-token` header), compared in constant time.
- Every answer carries a strict Content-Security-Policy (scripts, styles and connections from this origin only; no
  inline script or style, no frames, no plugins), and `no-store`, `nosniff`, `DENY` framing and a same-origin
  referrer policy.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from modelworks.api.request import Request
from modelworks.errors import Forbidden

COOKIE = "mw_portal"
SECURE_COOKIE = "__Host-mw_portal"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")

HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}

SAFE_METHODS = ("GET", "HEAD")


PUBLIC_ORIGIN: str | None = None  # `portal.public_origin`, set once by `mount_portal`


def is_tls(request: Request) -> bool:
    """Whether browsers reach the portal over TLS: the configured public origin says so behind a proxy."""
    if PUBLIC_ORIGIN is not None:
        return PUBLIC_ORIGIN.startswith("https://")
    return request.scope.get("scheme") == "https"


def own_origin(request: Request) -> str:
    """This server's origin as the browser sees it: `portal.public_origin` where set (behind a TLS proxy), else
    the scheme and the Host the request came to."""
    if PUBLIC_ORIGIN is not None:
        return PUBLIC_ORIGIN.lower().rstrip("/")
    scheme = "https" if is_tls(request) else "http"
    return f"{scheme}://{request.headers.get('host', '')}".lower()


def session_cookie(request: Request) -> str | None:
    """The session id the browser sent, if any."""
    raw = request.headers.get("cookie")
    if not raw:
        return None
    wanted = SECURE_COOKIE if is_tls(request) else COOKIE
    for part in raw.split(";"):
        name, _, value = part.strip().partition("=")
        if name == wanted and value:
            return value
    return None


def set_cookie(request: Request, session_id: str, max_age: int) -> str:
    if is_tls(request):
        return f"{SECURE_COOKIE}={session_id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    return f"{COOKIE}={session_id}; Path=/portal; Max-Age={max_age}; HttpOnly; SameSite=Strict"


def clear_cookie(request: Request) -> str:
    if is_tls(request):
        return f"{SECURE_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
    return f"{COOKIE}=; Path=/portal; Max-Age=0; HttpOnly; SameSite=Strict"


def check_origin(request: Request) -> None:
    """A state-changing request must come from a page of this origin. A request with neither `Origin` nor
    `Referer` is refused too: browsers send one on every cross-origin POST, and the portal's own pages always do."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if referer is None:
            raise Forbidden("This request has no Origin: the portal takes changes only from its own pages.",
                            code="origin_mismatch")
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin.lower() != own_origin(request):
        raise Forbidden("This request comes from another origin: the portal takes changes only from its own pages.",
                        code="origin_mismatch")


def check_csrf(request: Request, expected: str, given: str | None) -> None:
    """The session's CSRF token must come with every state-changing request (a form field or a header)."""
    if request.method in SAFE_METHODS:
        return
    token = given or request.headers.get("x-csrf-token") or ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("The form's security token is missing or out of date: reload the page and try again.",
                        code="csrf_failed")
