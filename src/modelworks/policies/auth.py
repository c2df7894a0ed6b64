"""Authentication: the API key from the `api-key` header or `Authorization: Bearer`, checked by its hash.

Checks are cached in-process: a known key for `ttl` seconds (so a revocation reaches every replica within
that time), an unknown one for `negative_ttl`. Lookups of the same key at once share one store query, run off
the event loop. Last-used times are collected here and written by the caller in batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

from modelworks.control.principal import Principal
from modelworks.errors import Unauthorized
from modelworks.policies.chain import Call

log = logging.getLogger("modelworks.auth")

Lookup = Callable[[str], Awaitable[Principal | None]]
_MAX_ENTRIES = 50_000


def presented_key(headers) -> str | None:
    key = headers.get("api-key") or headers.get("ocp-apim-subscription-key")  # the latter: Azure AI Content Safety
    if key:
        return key.strip()
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class ApiKeyAuth:
    stage = "authenticate"

    def __init__(self, lookup: Lookup, *, ttl: float = 4.0, negative_ttl: float = 1.0,
                 on_failure: Callable[[Call, str], Awaitable | None] | None = None,
                 failure_wait_s: float = 2.0) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.on_failure = on_failure  # records a failure (the audit trail); its answer waits for that, bounded
        self.failure_wait_s = failure_wait_s
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self.used: dict[str, datetime] = {}

    async def admit(self, call: Call) -> None:
        key = presented_key(call.headers)
        if not key:
            await self._failed(call, "missing key")
            raise Unauthorized(
                "You didn't provide an API key. Send it in the 'api-key' header or as 'Authorization: Bearer <key>'.",
                code="missing_api_key")
        digest = hashlib.sha256(key.encode()).hexdigest()
        entry = self._cache.get(digest)
        principal = entry[0] if entry is not None and entry[1] > time.monotonic() else await self._resolve(digest)
        if principal is None:
            await self._failed(call, "unknown, revoked or expired key")
            raise Unauthorized("Incorrect API key provided.")
        if principal.expires_at is not None and principal.expires_at <= datetime.now(timezone.utc):
            self._cache.pop(digest, None)
            await self._failed(call, "expired key")
            raise Unauthorized("The API key has expired.", code="expired_api_key")
        call.principal = principal
        self.used[principal.key_id] = datetime.now(timezone.utc)

    def forget(self) -> None:
        """Drop every cached check (this replica's own revocations take effect at once)."""
        self._cache.clear()

    async def _resolve(self, digest: str) -> Principal | None:
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            principal = await self.lookup(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._inflight.pop(digest, None)
        future.set_result(principal)
        if len(self._cache) >= _MAX_ENTRIES:
            now = time.monotonic()
            self._cache = {d: e for d, e in self._cache.items() if e[1] > now}
        self._cache[digest] = (principal, time.monotonic() + (self.ttl if principal else self.negative_ttl))
        return principal

    async def _failed(self, call: Call, reason: str) -> None:
        """Record the failure; the 401 goes out once the record is stored, or after `failure_wait_s`."""
        if self.on_failure is None:
            return
        recorded = self.on_failure(call, reason)
        if recorded is not None:
            try:
                await asyncio.wait_for(asyncio.shield(recorded), self.failure_wait_s)
            except TimeoutError:
                log.warning("answering a failed authentication before its audit entry was stored")

    def take_used(self) -> dict[str, datetime]:
        used, self.used = self.used, {}
        return used
