"""The live deployment catalog: the store's enabled deployments, each bound to its pool of configured backends
(only those inside the deployment's residency scope: see `modelworks.routing.residency`).

It reloads at once after a change made through this replica, and polls the store's version every
`interval` seconds for changes made through other replicas, so no change needs a restart.
"""

from __future__ import annotations

import asyncio
import logging

from modelworks.backends.base import Backend
from modelworks.control.deployments import DeploymentService
from modelworks.routing.pool import Members
from modelworks.routing.residency import Scope
from modelworks.service import Gateway, Route

log = logging.getLogger("modelworks.catalog")


class Catalog:
    def __init__(self, deployments: DeploymentService, backends: dict[str, Backend], gateway: Gateway,
                 members: Members, interval: float = 2.0, latency_aware: bool = False) -> None:
        self.deployments = deployments
        self.backends = backends
        self.gateway = gateway
        self.members = members
        self.latency_aware = latency_aware
        self.interval = interval
        self._version = None
        self._task: asyncio.Task | None = None

    def load(self) -> None:
        version = self.deployments.version()
        routes = {}
        for dep in self.deployments.all():
            if not dep["enabled"]:
                continue
            names = [n for n in dep["backends"] if n in self.backends]
            if len(names) < len(dep["backends"]):
                log.warning("deployment %s names unknown backends %s; they are left out", dep["name"],
                            sorted(set(dep["backends"]) - set(names)))
            if not names:
                continue
            scope = Scope(dep["deployment_type"], dep["region"], dep["data_zone"])
            model = dep["model"] or dep["name"]
            pool = self.members.pool(dep["name"], scope, names, model, self.latency_aware)
            routes[dep["name"]] = Route(deployment=dep["name"], backend=self.backends[names[0]], model=model,
                                        owned_by=dep["owned_by"], info=dep, pool=pool)
        self.gateway.routes = routes  # one reference swap: requests see the old or the new table, never half
        self._version = version

    async def reload(self) -> None:
        await asyncio.to_thread(self.load)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if await asyncio.to_thread(self.deployments.version) != self._version:
                    await self.reload()
            except Exception:  # noqa: BLE001 - the store may be away for a moment; keep serving the last table
                log.warning("could not refresh the deployment catalog", exc_info=True)
