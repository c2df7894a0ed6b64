"""Which remote MCP servers a project's requests may reach, and connections that go only where was checked.

The setting is the project's `mcp_servers` (admin API), read through `ProjectService` and cached for a few seconds
(`McpServerPolicy`):

- only `http` and `https` URLs with a host and without credentials;
- `mcp_servers` null (the default): any URL whose host resolves only to public addresses. Loopback, private
  (RFC 1918, ULA), link-local, shared (CGNAT), multicast, reserved and unspecified addresses are refused, and so
  are IPv6 forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64);
- `mcp_servers` a list: only URLs under one of its prefixes (same scheme, host and port; the path continuing the
  prefix's at a '/'), at whatever address, loopback and private ones included. The path of a prefix narrows what
  a request may name, but the origin is the boundary: list origins you trust. `[]` allows none;
- the host is resolved once, off the event loop, every address is checked, and `PinnedTransport` connects to a
  checked address only (the name still goes as Host and as the TLS server name, which is verified): a DNS
  answer that changes between the check and the connection (DNS rebinding) is never used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2

from modelworks.errors import InvalidRequest

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PORTS = {"http": 80, "https": 443}
NOT_ALLOWED = "mcp_server_not_allowed"  # the code of a refusal by the project's setting


class Unreachable(Exception):
    """The server could not be reached (its host did not resolve, say) or answered badly: the message says why."""


class ProjectSettings(Protocol):
    def mcp_servers(self, project_id: str) -> list[str] | None: ...


@dataclass(frozen=True)
class Target:
    """A URL the policy admitted, and the addresses checked for it (connections go to these only)."""

    url: httpx2.URL
    addresses: tuple[str, ...]


class McpServerPolicy:
    """Which MCP server URLs a project may reach (see the module's documentation)."""

    def __init__(self, projects: ProjectSettings, *, ttl_s: float = 5.0, resolve_timeout_s: float = 10.0,
                 max_cached: int = 4096) -> None:
        self.projects = projects
        self.ttl_s, self.resolve_timeout_s, self.max_cached = ttl_s, resolve_timeout_s, max_cached
        self._cache: OrderedDict[str, tuple[float, list[str] | None]] = OrderedDict()

    async def prefixes(self, project_id: str) -> list[str] | None:
        """The project's `mcp_servers`, at most `ttl_s` old: a change reaches every replica within that."""
        hit = self._cache.get(project_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        value = await asyncio.to_thread(self.projects.mcp_servers, project_id)
        self._cache[project_id] = (time.monotonic() + self.ttl_s, value)
        self._cache.move_to_end(project_id)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return value

    async def admit(self, project_id: str, raw_url: str, param: str) -> Target:
        """Check a server URL for a project and resolve its host. Raises InvalidRequest naming `param` (code
        `mcp_server_not_allowed` for a server the project may not reach), or Unreachable when the host does not
        resolve."""
        url = server_url(raw_url, param)
        prefixes = await self.prefixes(project_id)
        listed = prefixes is not None and any(_under(url, prefix) for prefix in prefixes)
        if prefixes is not None and not listed:
            raise InvalidRequest(f"The MCP server URL '{raw_url}' is not among the servers this project may "
                                 "reach; an admin can add it to the project's mcp_servers.", param=param,
                                 code=NOT_ALLOWED)
        host, port = url.raw_host.decode("ascii"), url.port or _PORTS[url.scheme]
        addresses = await _resolve(host, port, self.resolve_timeout_s)
        refused = [address for address in addresses if not is_public(address)]
        if refused and not listed:
            raise InvalidRequest(f"The MCP server host '{url.host}' has a non-public address ({refused[0]}); an "
                                 "admin can allow it by adding the URL to the project's mcp_servers.", param=param,
                                 code=NOT_ALLOWED)
        return Target(url, addresses)


def server_url(raw: str, param: str) -> httpx2.URL:
    """Parse a tool's `server_url`: http or https, a host, no credentials."""
    try:
        url = httpx2.URL(raw)
    except (httpx2.InvalidURL, TypeError, ValueError):
        raise InvalidRequest(f"'{param}' is not a valid URL.", param=param, code="invalid_url") from None
    if url.scheme not in _PORTS or not url.host:
        raise InvalidRequest(f"'{param}' must be an absolute http or https URL.", param=param, code="invalid_url")
    if url.userinfo:
        raise InvalidRequest(f"'{param}' must not hold credentials; send them in 'authorization' or 'headers'.",
                             param=param, code="invalid_url")
    return url


def is_public(address: str) -> bool:
    """Whether an IP address is a public (globally routed, unicast) one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None or ip in _NAT64:  # reaches the IPv4 address it holds
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public(str(embedded)):
            return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def _under(url: httpx2.URL, prefix: str) -> bool:
    try:
        base = httpx2.URL(prefix)
    except (httpx2.InvalidURL, ValueError):
        return False
    if (url.scheme, url.raw_host, url.port) != (base.scheme, base.raw_host, base.port):
        return False
    start, path = base.raw_path.split(b"?")[0], url.raw_path.split(b"?")[0]
    return path.startswith(start if start.endswith(b"/") else start + b"/") or path == start


async def _resolve(host: str, port: int, timeout_s: float) -> tuple[str, ...]:
    loop = asyncio.get_running_loop()
    try:  # in the loop's executor: a slow resolver never stalls the event loop
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise Unreachable(f"the host '{host}' could not be resolved ({str(exc) or 'timed out'})") from None
    return tuple(dict.fromkeys(info[4][0] for info in infos))


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends requests for the admitted URL's origin to its checked addresses, and bounds each answer's size."""

    def __init__(self, target: Target, max_bytes: int) -> None:
        self._origin = (target.url.scheme, target.url.raw_host, target.url.port)
        self._addresses = target.addresses
        self._max_bytes = max_bytes
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if (url.scheme, url.raw_host, url.port) != self._origin:
            raise httpx2.ConnectError(f"{url.host} is not the server that was checked", request=request)
        if url.scheme == "https":  # TLS names (and verifies) the host, not the address
            request.extensions = {**request.extensions, "sni_hostname": url.raw_host.decode("ascii")}
        failure: Exception = httpx2.ConnectError("no address to connect to", request=request)
        for address in self._addresses:
            request.url = url.copy_with(host=address.split("%", 1)[0])
            try:
                response = await self._inner.handle_async_request(request)
            except httpx2.ConnectError as exc:
                failure = exc
                continue
            finally:
                request.url = url
            response.stream = _Bounded(response.stream, self._max_bytes)
            return response
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Bounded(httpx2.AsyncByteStream):
    def __init__(self, stream: Any, limit: int) -> None:
        self._stream, self._limit = stream, limit

    async def __aiter__(self):
        seen = 0
        async for chunk in self._stream:
            seen += len(chunk)
            if seen > self._limit:
                raise httpx2.ReadError(f"the server's answer is over {self._limit:,} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
