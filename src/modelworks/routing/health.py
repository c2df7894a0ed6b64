"""Active health checks: every `interval` seconds each pooled backend's `health()` is asked (with a timeout); a
backend that fails it is taken out of every pool (for every model) until it passes again. All run at once."""

from __future__ import annotations

import asyncio
import logging

from modelworks.routing.pool import Members

log = logging.getLogger("modelworks.health")


class HealthMonitor:
    def __init__(self, members: Members, interval: float, timeout: float = 5.0) -> None:
        self.members = members
        self.interval = interval
        self.timeout = timeout
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def check_all(self) -> None:
        by_backend: dict[str, list] = {}
        for member in self.members.all():
            by_backend.setdefault(member.name, []).append(member)
        await asyncio.gather(*(self._check(group) for group in by_backend.values()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_all()

    async def _check(self, group: list) -> None:
        backend = group[0].backend
        try:
            async with asyncio.timeout(self.timeout):
                health = await backend.health()
            ok, detail = health.ok, health.detail
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
            ok, detail = False, f"health check failed: {exc.__class__.__name__}"
        if ok != group[0].healthy:
            log.warning("backend %s is %s (%s)", group[0].name, "healthy again" if ok else "unhealthy", detail)
        for member in group:
            member.healthy = ok
