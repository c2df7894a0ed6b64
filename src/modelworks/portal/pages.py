"""The portal's screens: sign-in and sign-out, the overview, and its static files. Thin: what a screen shows comes
from the same services as the admin API, with the same rules for who sees what."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from datetime import datetime, timezone
from urllib.parse import urlsplit

from modelworks.control.audit import Event
from modelworks.control.plane import ControlPlane
from modelworks.errors import NotFound
from modelworks.portal import security
from modelworks.portal.web import HERE, Page, Portal, Raw, Redirect, Visit
from modelworks.routing.pool import CLOSED, HALF_OPEN, OPEN, Members
from modelworks.service import Gateway

AZURE_API_VERSION = "2024-10-21"
STATIC = HERE / "static"
CIRCUITS = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}  # in order, the worst last


class Pages:
    def __init__(self, portal: Portal, control: ControlPlane, gateway: Gateway, members: Members) -> None:
        self.portal = portal
        self.control = control
        self.gateway = gateway
        self.members = members
        self._static: dict[str, tuple[bytes, str, str]] = {}

    # -- signing in and out ----------------------------------------------------------------------------------

    async def sign_in_form(self, visit: Visit) -> Page | Redirect:
        if visit.session is not None:
            return Redirect(_next(visit.request.query("next")))
        return Page("sign_in.html", {"next": _next(visit.request.query("next"))})

    async def sign_in(self, visit: Visit) -> Page | Redirect:
        """A key (admin, project admin or user) for a session. The key is read once, from the form, and never
        stored, echoed or set in a cookie; a wrong one is a 401 page."""
        key = visit.form.get("key", "").strip()
        target = _next(visit.form.get("next"))
        opened = await asyncio.to_thread(self.portal.sessions.open, key,
                                         visit.request.headers.get("user-agent", "")) if key else None
        if opened is None:  # recorded as the API's failed authentications are
            await asyncio.to_thread(self.control.audit.append, [Event(
                "auth.failed", outcome="denied", detail={"reason": "unknown, revoked or expired key" if key
                                                         else "missing key", "operation": "portal.sign_in"})])
            return Page("sign_in.html", {"next": target, "failed": True}, status=401)
        session_id, session = opened
        max_age = max(1, int((session.expires_at - datetime.now(timezone.utc)).total_seconds()))
        cookie = security.set_cookie(visit.request, session_id, max_age)
        return Redirect(target, {"set-cookie": cookie})

    async def sign_out(self, visit: Visit) -> Redirect:
        session_id = security.session_cookie(visit.request)
        if session_id is not None:
            await asyncio.to_thread(self.portal.sessions.revoke, session_id)
        return Redirect("/portal/sign-in", {"set-cookie": security.clear_cookie(visit.request)})

    # -- overview --------------------------------------------------------------------------------------------

    async def overview(self, visit: Visit) -> Page:
        who = visit.who
        origin = security.own_origin(visit.request)
        deployments = sorted(name for name, route in self.gateway.routes.items() if route.info.get("enabled", True))
        example = next((d for d in deployments if "minilm" not in d), deployments[0] if deployments else "my-deployment")
        today = datetime.now(timezone.utc).date()
        scope = {"project_id": None if who.is_admin else who.project_id,
                 "key_id": who.key_id if who.role == "user" else None}
        totals = await asyncio.to_thread(self.control.daily.aggregate, since=today, until=today, group_by=(), **scope)
        total = totals[0] if totals else {}
        return Page("overview.html", {
            "origin": origin, "openai_base": f"{origin}/v1", "azure_endpoint": origin,
            "api_version": AZURE_API_VERSION, "example": example, "deployments": deployments,
            "backends": self._backends(), "scope": "all projects" if who.is_admin else (
                "your key" if who.role == "user" else "your project"),
            "today": {"requests": total.get("requests") or 0,
                      "tokens": (total.get("prompt_tokens") or 0) + (total.get("completion_tokens") or 0),
                      "errors": total.get("errors") or 0}})

    def backend_states(self) -> dict[str, dict]:
        return {row["name"]: row for row in self._backends()}

    def _backends(self) -> list[dict]:
        """Each backend's live state, over the models it serves: healthy, its circuit, requests in flight."""
        out: dict[str, dict] = {}
        for member in self.members.all():
            row = out.setdefault(member.name, {"name": member.name, "region": member.region,
                                               "provider": member.place.provider, "healthy": True,
                                               "circuit": "closed", "in_flight": 0})
            row["healthy"] = row["healthy"] and member.healthy
            row["circuit"] = max(row["circuit"], CIRCUITS[member.state], key=list(CIRCUITS.values()).index)
            row["in_flight"] += member.in_flight
        return sorted(out.values(), key=lambda r: r["name"])

    # -- static files ----------------------------------------------------------------------------------------

    async def static(self, visit: Visit) -> Raw:
        name = visit.request.path_params["path"]
        if "\x00" in name:
            raise NotFound("No such file.")
        cached = self._static.get(name)
        if cached is None:
            path = (STATIC / name).resolve()
            if STATIC.resolve() not in path.parents or not path.is_file():
                raise NotFound(f"No file '{name[:80]}'.")
            body = path.read_bytes()
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind == "application/javascript":
                kind += "; charset=utf-8"
            cached = self._static[name] = (body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        body, kind, etag = cached
        if visit.request.headers.get("if-none-match") == etag:
            return Raw(b"", kind, 304, {"etag": etag, "cache-control": "no-cache"})
        return Raw(body, kind, 200, {"etag": etag, "cache-control": "no-cache"})


    async def not_found(self, visit: Visit) -> Page:
        raise NotFound(f"There is no portal page at {visit.request.path[:200]}.")


def _next(raw: str | None) -> str:
    """Where to go after signing in: a portal path of this site, never another site (an open redirect)."""
    if not raw:
        return "/portal"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw) or len(raw) > 2000:  # nothing a header cannot hold
        return "/portal"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/portal") or raw.startswith("//") or "\\" in raw:
        return "/portal"
    return raw
