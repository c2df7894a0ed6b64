"""The portal's routes, mounted on the API's router by `create_app` (when `portal.enabled`)."""

from __future__ import annotations

import asyncio
import logging

from modelworks.api.http import Endpoint
from modelworks.api.router import Router
from modelworks.api.routes import Handlers
from modelworks.catalog import Catalog
from modelworks.control.plane import ControlPlane
from modelworks.portal import security
from modelworks.portal.audit import AuditScreen
from modelworks.portal.deployments import DeploymentsScreen
from modelworks.portal.filters import FiltersScreen
from modelworks.portal.keys import KeysScreen
from modelworks.portal.pages import Pages
from modelworks.portal.playground import Playground
from modelworks.portal.sessions import SessionService
from modelworks.portal.usage import UsageScreen
from modelworks.portal.web import Portal, Redirect
from modelworks.routing.pool import Members
from modelworks.service import Gateway
from modelworks.settings import Settings

log = logging.getLogger("modelworks.portal")


def mount_portal(router: Router, app, settings: Settings, control: ControlPlane, gateway: Gateway, members: Members,
                 catalog: Catalog, handlers: Handlers) -> None:
    """Add the portal's routes (its catch-all last) and its session purge loop to the app."""
    security.PUBLIC_ORIGIN = settings.portal.public_origin
    sessions = SessionService(control.db, control.keys, settings.portal.session_hours, settings.portal.idle_minutes)
    portal = Portal(sessions)
    pages = Pages(portal, control, gateway, members)

    async def home(visit) -> Redirect:
        return Redirect("/portal")

    router.add("/portal", portal.endpoint(pages.overview), ("GET",))
    router.add("/portal/", portal.endpoint(home, signed_in=False), ("GET",))
    router.add("/portal/sign-in", portal.endpoint(pages.sign_in_form, signed_in=False), ("GET",))
    router.add("/portal/sign-in", portal.endpoint(pages.sign_in, signed_in=False, csrf=False), ("POST",))
    router.add("/portal/sign-out", portal.endpoint(pages.sign_out, signed_in=False), ("POST",))
    router.add("/portal/static/{path:path}", portal.endpoint(pages.static, signed_in=False), ("GET",))
    deployments = DeploymentsScreen(control, catalog, pages.backend_states)
    router.add("/portal/deployments", portal.endpoint(deployments.list), ("GET",))
    router.add("/portal/deployments", portal.endpoint(deployments.create), ("POST",))
    router.add("/portal/deployments/{name}", portal.endpoint(deployments.edit_form), ("GET",))
    router.add("/portal/deployments/{name}", portal.endpoint(deployments.update), ("POST",))
    router.add("/portal/deployments/{name}/enabled", portal.endpoint(deployments.toggle), ("POST",))
    router.add("/portal/deployments/{name}/delete", portal.endpoint(deployments.delete), ("POST",))
    keys = KeysScreen(control, sessions)
    router.add("/portal/keys", portal.endpoint(keys.list), ("GET",))
    router.add("/portal/keys", portal.endpoint(keys.create_key), ("POST",))
    router.add("/portal/keys/{key_id}/revoke", portal.endpoint(keys.revoke_key), ("POST",))
    router.add("/portal/projects", portal.endpoint(keys.create_project), ("POST",))
    router.add("/portal/projects/{project_id}", portal.endpoint(keys.update_project), ("POST",))
    usage = UsageScreen(control)
    router.add("/portal/usage", portal.endpoint(usage.page), ("GET",))
    router.add("/portal/usage.csv", portal.endpoint(usage.csv), ("GET",))
    audit = AuditScreen(control)
    router.add("/portal/audit", portal.endpoint(audit.page), ("GET",))
    router.add("/portal/audit/verify", portal.endpoint(audit.verify), ("POST",))
    router.add("/portal/audit.jsonl", portal.endpoint(audit.export), ("GET",))
    filters = FiltersScreen(control, settings.content_filter_policies)
    router.add("/portal/filters", portal.endpoint(filters.page), ("GET",))
    router.add("/portal/blocklists", portal.endpoint(filters.create_blocklist), ("POST",))
    router.add("/portal/blocklists/{blocklist_id}/items", portal.endpoint(filters.add_item), ("POST",))
    router.add("/portal/blocklists/{blocklist_id}/items/{item_id}/remove", portal.endpoint(filters.remove_item),
               ("POST",))
    router.add("/portal/blocklists/{blocklist_id}/delete", portal.endpoint(filters.delete_blocklist), ("POST",))
    playground = Playground(sessions, handlers, gateway, control)
    router.add("/portal/playground", portal.endpoint(playground.page), ("GET",))
    router.add("/portal/api/chat/completions", Endpoint(playground.chat), ("POST",))  # the API's errors and streams
    router.add("/portal/{rest:path}", portal.endpoint(pages.not_found, signed_in=False),
               ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))  # a page of its own, with the portal's headers

    async def purge_sessions() -> None:
        while True:
            try:
                await asyncio.to_thread(sessions.purge)
            except Exception:  # noqa: BLE001 - the store may be away for a moment
                log.warning("could not purge ended portal sessions", exc_info=True)
            await asyncio.sleep(3600)
    app.loops.append(purge_sessions)
