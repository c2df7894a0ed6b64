"""The Playground: try a deployment from the browser, as the signed-in principal.

The page posts chat completions to `/portal/api/chat/completions`: the same request body and the same handler as
`/v1/chat/completions` (`Handlers.serve`), so quotas, budgets, content filters, residency, metering and the audit of
usage apply exactly as for an API call with the session's key. Only authentication differs: the session cookie,
with the CSRF token in a header and the page's own Origin, instead of a key (the key never reaches the browser).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from modelworks.api.http import EventStream, JSONResult
from modelworks.api.request import Request
from modelworks.api.routes import Handlers
from modelworks.errors import Unauthorized
from modelworks.policies.chain import Call
from modelworks.portal import security
from modelworks.portal.pages import AZURE_API_VERSION
from modelworks.portal.web import Page, Visit
from modelworks.protocol.requests import ChatCompletionRequest
from modelworks.service import Gateway


class Playground:
    def __init__(self, sessions, handlers: Handlers, gateway: Gateway, control) -> None:
        self.control = control
        self.sessions = sessions
        self.handlers = handlers
        self.gateway = gateway

    async def page(self, visit: Visit) -> Page:
        chat = sorted(name for name, route in self.gateway.routes.items() if route.info.get("enabled", True)
                      and any(m.backend.capabilities.chat and m.backend.capabilities.streaming
                              for m in route.pool.members))
        origin = security.own_origin(visit.request)
        return Page("playground.html", {"deployments": chat, "openai_base": f"{origin}/v1",
                                        "azure_endpoint": origin, "api_version": AZURE_API_VERSION})

    async def chat(self, request: Request) -> JSONResult | EventStream:
        """The playground's chat completion (JSON or SSE), as the session's principal. Errors are the API's."""
        security.check_origin(request)
        session_id = security.session_cookie(request)
        session = await asyncio.to_thread(self.sessions.get, session_id) if session_id else None
        if session is None:
            raise Unauthorized("Sign in to the portal first (your session has ended).", code="no_session")
        security.check_csrf(request, session.csrf, None)
        call = Call(operation="chat.completions", headers=request.headers, principal=session.principal)
        self.control.auth.used[session.principal.key_id] = datetime.now(timezone.utc)  # its last-used time
        call.response_headers.update({k: v for k, v in security.HEADERS.items() if k != "cache-control"})
        return await self.handlers.serve(call, request, ChatCompletionRequest)
