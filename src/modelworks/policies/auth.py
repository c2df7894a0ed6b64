"""Authentication: the API key from the `api-key` header or `Authorization: Bearer`, compared by hash."""

from __future__ import annotations

import hashlib
import hmac

from modelworks.errors import Unauthorized
from modelworks.policies.chain import Call


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers) -> str | None:
    key = headers.get("api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class ApiKeyAuth:
    """Admits calls that carry one of the configured keys. Keys are held only as SHA-256 hashes."""

    def __init__(self, key_hashes: list[str]) -> None:
        self.key_hashes = [bytes.fromhex(h) for h in key_hashes]

    async def admit(self, call: Call) -> None:
        key = presented_key(call.headers)
        if not key:
            raise Unauthorized(
                "You didn't provide an API key. Send it in the 'api-key' header or as 'Authorization: Bearer <key>'.",
                code="missing_api_key")
        digest = hashlib.sha256(key.encode()).digest()
        if not any(hmac.compare_digest(digest, h) for h in self.key_hashes):
            raise Unauthorized("Incorrect API key provided.")
        call.principal = "bootstrap"
