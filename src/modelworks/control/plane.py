"""The control plane of one server process: the store, its services, and the auth policy that uses them."""

from __future__ import annotations

import asyncio
import logging

from modelworks.control.audit import AuditLog, Event
from modelworks.control.audit_writer import AuditWriter
from modelworks.control.blocklists import BlocklistService
from modelworks.control.bootstrap import bootstrap
from modelworks.control.content_log import ContentLog
from modelworks.control.leases import Leases
from modelworks.control.deployments import DeploymentService
from modelworks.control.keys import KeyService
from modelworks.control.projects import ProjectService
from modelworks.metering.daily import DailyUsage
from modelworks.metering.usage import UsageService
from modelworks.metering.wal import UsageWAL
from modelworks.policies.auth import ApiKeyAuth
from modelworks.settings import Settings
from modelworks.store.db import Database

log = logging.getLogger("modelworks.control")


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database.from_settings(settings)
        self.keys = KeyService(self.db)
        self.projects = ProjectService(self.db)
        self.deployments = DeploymentService(self.db, settings.backend_places, set(settings.content_filter_policies),
                                             settings.default_tpm)
        self.blocklists = BlocklistService(self.db)
        self.leases = Leases(self.db)  # periodic work that one replica at a time does
        self.content_log = ContentLog(self.db, leases=self.leases)
        self.usage = UsageService(self.db)
        self.daily = DailyUsage(self.db)  # the same, summed by day (the portal's usage screens)
        self.wal = UsageWAL(settings.data_path / "usage-wal", self.usage.insert_json, settings.metering.flush_seconds)
        self.audit = AuditLog(self.db)
        self.audit_writer = AuditWriter(self.audit)
        self.auth = ApiKeyAuth(self._lookup, ttl=settings.auth.key_cache_seconds, on_failure=self._auth_failed)
        self._prepared = False
        self._flusher: asyncio.Task | None = None

    def prepare(self) -> str | None:
        """Migrate and bootstrap (idempotent). Returns a newly generated admin key to print once, or None."""
        if self._prepared:
            return None
        new_key = bootstrap(self.db, self.settings.api_key)
        self.deployments.sync_config(self.settings.deployments)
        self.wal.open()  # replays what a killed process left behind
        self._prepared = True
        return new_key

    async def start(self) -> None:
        new_key = await asyncio.to_thread(self.prepare)
        if new_key:
            print(f"API key (shown once; stored only as a hash): {new_key}", flush=True)
        self._flusher = asyncio.create_task(self._flush_forever())
        self.audit_writer.start()
        self.wal.start()
        self.content_log.start()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.audit_writer.close()
        await self.wal.close()
        await self.content_log.close()
        await asyncio.to_thread(self.keys.touch, self.auth.take_used())
        await asyncio.to_thread(self.leases.release_all)
        await asyncio.to_thread(self.db.dispose)

    def budget(self, project_id: str) -> dict:
        """This month's spend against the project's caps, with the soft threshold."""
        from modelworks.policies.budget import month_start

        project = self.projects.get(project_id)
        month = month_start()
        tokens, cost = self.usage.totals(project_id, month)
        fractions = [tokens / project["monthly_token_cap"] if project["monthly_token_cap"] else None,
                     cost / project["monthly_cost_cap"] if project["monthly_cost_cap"] else None]
        used = max((f for f in fractions if f is not None), default=None)
        return {"month": month.strftime("%Y-%m"), "tokens": tokens, "cost": round(cost, 6),
                "monthly_token_cap": project["monthly_token_cap"], "monthly_cost_cap": project["monthly_cost_cap"],
                "soft_threshold": project["soft_threshold"], "used_fraction": used,
                "soft_threshold_reached": used is not None and used >= (project["soft_threshold"] or 1.0),
                "exhausted": used is not None and used >= 1.0}

    def _auth_failed(self, call, reason: str):
        """Queue the entry; the 401 waits for it while the store is writing (not while it is failing)."""
        writer = self.audit_writer
        stored = writer.submit(Event("auth.failed", outcome="denied",
                                     detail={"reason": reason, "operation": call.operation}))
        return stored if writer.healthy else None

    async def _lookup(self, digest: str):
        return await asyncio.to_thread(self.keys.lookup, digest)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(10)
            used = self.auth.take_used()
            if used:
                try:
                    await asyncio.to_thread(self.keys.touch, used)
                except Exception:  # noqa: BLE001 - last-used times are best effort; the next flush retries
                    log.warning("could not record key last-used times", exc_info=True)
                    self.auth.used.update({k: v for k, v in used.items() if k not in self.auth.used})
