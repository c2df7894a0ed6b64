"""The portal's HTTP plumbing: templates, the endpoint wrapper (session, CSRF, security headers, errors as pages)
and the answers a handler returns (a page, a redirect, JSON, a file)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import parse_qs, quote

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from modelworks.api.admin import _refuse_nul as refuse_nul
from modelworks.api.errors import OPENAI, envelope
from modelworks.api.http import new_request_id
from modelworks.api.request import Request
from modelworks.control.audit import Event
from modelworks.errors import Forbidden, InvalidRequest, ModelworksError, Unauthorized, UnsupportedMediaType
from modelworks.portal import security
from modelworks.portal.sessions import Session, SessionService

log = logging.getLogger("modelworks.portal")

HERE = Path(__file__).parent
FORM_LIMIT = 64 * 1024


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["thousands"] = lambda n: f"{int(n or 0):,}"
    return env


@dataclass
class Page:
    template: str
    context: dict = field(default_factory=dict)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Redirect:
    location: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    body: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Visit:
    """What a handler knows of the request: the request, its session (None before sign-in), its form."""

    request: Request
    session: Session | None
    form: dict[str, str] = field(default_factory=dict)

    @property
    def who(self):
        return self.session.principal if self.session is not None else None


Handler = Callable[[Visit], Awaitable["Page | Redirect | Raw"]]


class Portal:
    """Shared by the portal's endpoints: the templates, the sessions and what every page shows."""

    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self.env = templates()

    def endpoint(self, handler: Handler, *, signed_in: bool = True, api: bool = False,
                 csrf: bool = True) -> "PortalEndpoint":
        return PortalEndpoint(self, handler, signed_in=signed_in, api=api, csrf=csrf)

    def render(self, page: Page, visit: Visit) -> bytes:
        who = visit.who
        context = {"who": who, "csrf": visit.session.csrf if visit.session else "", "path": visit.request.path,
                   "nav": navigation(who.role) if who is not None else [], **page.context}
        return self.env.get_template(page.template).render(context).encode()


def navigation(role: str) -> list[tuple[str, str]]:
    """The screens a role sees, in order: (path, label)."""
    items = [("/portal", "Overview"), ("/portal/playground", "Playground")]
    if role in ("admin", "project_admin"):
        items += [("/portal/deployments", "Deployments"), ("/portal/keys", "Keys and projects")]
    items.append(("/portal/usage", "Usage"))
    if role in ("admin", "project_admin"):
        items += [("/portal/filters", "Content filters"), ("/portal/audit", "Audit")]
    return items


class PortalEndpoint:
    __slots__ = ("portal", "handler", "signed_in", "api", "csrf", "__name__")

    def __init__(self, portal: Portal, handler: Handler, *, signed_in: bool, api: bool, csrf: bool = True) -> None:
        self.csrf = csrf  # check the session's CSRF token on changes (sign-in's form has none)
        self.portal = portal
        self.handler = handler
        self.signed_in = signed_in  # the page needs a session (else: to the sign-in page)
        self.api = api  # answers JSON in the OpenAI envelope, not pages
        self.__name__ = handler.__name__

    async def __call__(self, scope, receive, send, path_params: dict[str, str]) -> None:
        request = Request(scope, receive, path_params)
        request_id = new_request_id()
        visit = Visit(request, None)
        try:
            result = await self._handle(visit)
        except OSError:
            return
        except Exception as exc:  # noqa: BLE001 - the one place that renders the portal's errors
            result = self._error(exc, visit)
        try:
            await _send(send, self._bytes(result, visit), request_id)
        except OSError:
            return

    async def _handle(self, visit: Visit):
        request = visit.request
        refuse_nul(request)  # PostgreSQL refuses NUL in text: a 400, not a failed query
        security.check_origin(request)
        session_id = security.session_cookie(request)
        if session_id is not None:
            visit.session = await asyncio.to_thread(self.portal.sessions.get, session_id)
        if self.signed_in and visit.session is None:
            if self.api or request.method not in security.SAFE_METHODS:
                raise Unauthorized("Sign in to the portal first (your session has ended).", code="no_session")
            return Redirect("/portal/sign-in?next=" + quote(request.path, safe="/"))
        if request.method not in security.SAFE_METHODS:
            if not self.api:
                visit.form = await read_form(request)
            if visit.session is not None and self.csrf:  # not sign-in's form: its Origin is checked (a stale tab)
                security.check_csrf(request, visit.session.csrf, visit.form.get("csrf"))
        return await self.handler(visit)

    def _error(self, exc: Exception, visit: Visit):
        if not isinstance(exc, ModelworksError):
            log.exception("portal error on %s %s", visit.request.method, visit.request.path)
        status, body, headers = envelope(exc, dialect=OPENAI)
        if self.api:
            return Raw(orjson.dumps(body), "application/json", status, headers or {})
        error = body["error"]
        return Page("error.html", {"status": status, "message": error["message"], "code": error.get("code")}, status)

    def _bytes(self, result, visit: Visit) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = dict(security.HEADERS)
        if isinstance(result, Redirect):
            headers.update(result.headers)
            headers["location"] = result.location
            return 303, _raw(headers, "text/plain; charset=utf-8"), b""
        if isinstance(result, Raw):
            headers.update(result.headers)
            return result.status, _raw(headers, result.content_type), result.body
        headers.update(result.headers)
        return result.status, _raw(headers, "text/html; charset=utf-8"), self.portal.render(result, visit)


def _raw(headers: dict[str, str], content_type: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type.encode())] + [(k.encode(), v.encode()) for k, v in headers.items()
                                                          if k != "content-type"]


async def _send(send, answer: tuple[int, list[tuple[bytes, bytes]], bytes], request_id: str) -> None:
    status, headers, body = answer
    headers = headers + [(b"x-request-id", request_id.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the portal's forms), one value a field."""
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):  # none: an empty form, as some clients send it
        raise UnsupportedMediaType("The portal's forms are sent as application/x-www-form-urlencoded.")
    raw = await request.body(FORM_LIMIT, check_type=False)
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The form could not be read.", param=None) from None
    if any("\x00" in v for values in fields.values() for v in values):
        raise InvalidRequest("A form field holds a NUL character.", param=None)
    return {name: values[-1] for name, values in fields.items()}



def form_error(exc: Exception) -> str:
    """What a form shows of a refused value: the field and what is wrong with it."""
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'the form'}: {err['msg']}"
    return str(getattr(exc, "message", exc))


def require(visit: Visit, roles: tuple[str, ...], message: str):
    """The signed-in principal, when its role is one of `roles`; else a 403 saying `message`."""
    if visit.who.role not in roles:
        raise Forbidden(message)
    return visit.who


async def audit(control, visit: Visit, action: str, project_id: str | None, target: str, detail: dict) -> None:
    """An audit entry for a change made in the portal: the admin API's entry, marked `"via": "portal"`."""
    event = Event(action, actor=visit.who.key_id, project_id=project_id, target=target,
                  detail={**detail, "via": "portal"})
    await asyncio.to_thread(control.audit.append, [event])


def number(form: dict, name: str, kind: type):
    """A form's number field (thousands separators allowed), or None when it is empty; a 400 naming it when it is
    not a number."""
    raw = form.get(name, "").strip().replace(",", "").replace("_", "")
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number.", param=name) from None
