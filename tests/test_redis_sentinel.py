"""The Redis limiter behind Redis Sentinel: a primary, a replica and three sentinels (Debian's redis-server and
redis-sentinel), two limiters standing for two gateway replicas, traffic from both, and the primary killed
(SIGKILL) under it. Admission resumes within 10 s (503 meanwhile), and the window's limit holds: exactly with
`redis_wait_replicas: 1`, and within the lease bound the README states without it."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelworks.errors import Unavailable
from modelworks.quota.limiter import Check
from modelworks.quota.redis_limiter import RedisLimiter
from modelworks.quota.resp import RespClient
from support.databases import require_services
from support.servers import free_port

pytestmark = pytest.mark.anyio

LIMIT = 30_000       # tokens in the window
AMOUNT = 10          # per request
WINDOW = 120         # longer than the test: every admission counts against one limit
WORKERS = 4          # per replica


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (make test installs it with apt-get)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisGroup:
    """A primary, a replica and three sentinels on loopback, in `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = _binary("redis-server")
        self.sentinel_bin = shutil.which("redis-sentinel") or self.server
        self.ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)

    def start(self) -> None:
        primary, replica = self.ports
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        self._spawn("primary", [self.server, "--port", str(primary), *common])
        self._spawn("replica", [self.server, "--port", str(replica), *common,
                                "--replicaof", "127.0.0.1", str(primary)])
        for i, port in enumerate(self.sentinel_ports):
            conf = self.tmp / f"sentinel{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                            f"sentinel monitor mw 127.0.0.1 {primary} 2\n"
                            "sentinel down-after-milliseconds mw 1000\n"
                            "sentinel failover-timeout mw 10000\n"
                            "sentinel parallel-syncs mw 1\n")
            args = [self.sentinel_bin, str(conf)] + (["--sentinel"] if self.sentinel_bin == self.server else [])
            self._spawn(f"sentinel{i}", args)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + "/mw"

    def kill_primary(self) -> None:
        self.procs["primary"].send_signal(signal.SIGKILL)
        self.procs["primary"].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp.glob("*.log")))


async def _ask(port: int, *args):
    client = RespClient(f"redis://127.0.0.1:{port}")
    try:
        return await asyncio.wait_for(client.call(*args), 5)
    finally:
        await client.close()


async def _ready(group: RedisGroup) -> None:
    """The replica is in sync and every sentinel sees it and the two other sentinels."""
    deadline = time.monotonic() + 60
    while True:
        try:
            info = (await _ask(group.ports[1], "INFO", "replication")).decode()
            views = [(await _ask(p, "SENTINEL", "replicas", "mw"), await _ask(p, "SENTINEL", "sentinels", "mw"))
                     for p in group.sentinel_ports]
            if "master_link_status:up" in info and all(len(r) == 1 and len(s) == 2 for r, s in views):
                return
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the Redis group did not come up:\n" + group.logs())
        await asyncio.sleep(0.2)


@pytest.fixture
def redis_group(tmp_path):
    group = RedisGroup(tmp_path)
    group.start()
    yield group
    group.stop()


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait-for-the-replica", "asynchronous-replication"])
async def test_the_limiter_follows_a_sentinel_failover(redis_group, wait_replicas):
    await _ready(redis_group)
    replicas = [RedisLimiter(redis_group.url, prefix="mw:sentinel:", wait_replicas=wait_replicas)
                for _ in range(2)]
    check = [Check("dep:failover:tok", WINDOW, LIMIT, AMOUNT)]
    admitted = [0]
    events: list[tuple[float, str]] = []  # (time, "ok" | "unavailable" | "refused")
    others: list[BaseException] = []
    stop = asyncio.Event()

    async def worker(limiter: RedisLimiter) -> None:
        while not stop.is_set():
            try:
                decision = await limiter.acquire(check)
            except Unavailable:
                events.append((time.monotonic(), "unavailable"))
                await asyncio.sleep(0.05)  # as a client retrying a 503 would, sooner
                continue
            except Exception as exc:  # noqa: BLE001 - anything but a retryable 503 fails the test
                others.append(exc)
                return
            if decision.admitted:
                admitted[0] += AMOUNT
                events.append((time.monotonic(), "ok"))
                await asyncio.sleep(0.02)
            else:
                events.append((time.monotonic(), "refused"))
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(worker(limiter)) for limiter in replicas for _ in range(WORKERS)]
    try:
        await asyncio.sleep(2.0)
        assert admitted[0] > 0 and not others, others
        killed_at = time.monotonic()
        redis_group.kill_primary()
        # traffic goes on until the limit refuses (it is reached after the failover) and a while after
        deadline = killed_at + 40
        while time.monotonic() < deadline and not any(k == "refused" and t > killed_at for t, k in events):
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for limiter in replicas:
            await limiter.close()
    assert not others, others

    outage = [t for t, kind in events if kind == "unavailable"]
    resumed = [t for t, kind in events if kind != "unavailable" and outage and t > outage[0]]
    assert outage, "the failover went unnoticed (no 503 while the primary was gone)"
    assert resumed, "admission did not resume after the failover:\n" + redis_group.logs()
    resumed_after = resumed[0] - killed_at
    print(f"\nwait_replicas={wait_replicas}: admission resumed {resumed_after:.1f} s after the kill; "
          f"{len(outage)} answers 503 meanwhile; admitted {admitted[0]} of a limit of {LIMIT}")
    assert resumed_after <= 10.0, f"admission resumed only {resumed_after:.1f} s after the primary died"
    assert any(k == "refused" for t, k in events if t > killed_at), "the limit was not reached after the failover"

    if wait_replicas:  # every admitted charge was on the replica before it was admitted: the limit holds exactly
        assert admitted[0] <= LIMIT
    else:  # what the primary had charged and not yet sent to its replica is lost: within the README's bound
        assert admitted[0] <= LIMIT + len(replicas) * LIMIT // RedisLimiter.LEASE_SHARE


def test_redis_out_of_reach_is_a_retryable_503(tmp_path):
    """No Redis at all: a limited request is refused with a retryable 503 that names no internal address (the
    limiter fails closed: limits are never skipped), and the server recovers by itself when Redis appears."""
    import httpx

    from conftest import API_KEY
    from support.servers import start_modelworks

    port = free_port()
    config = {"quota": {"limiter": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"},
              "backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake", "rpm": 600}}}
    server = start_modelworks(tmp_path, config, API_KEY)
    redis = None
    try:
        chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={"api-key": API_KEY}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "service_unavailable" and str(port) not in r.text
        redis = subprocess.Popen([_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, cwd=tmp_path)
        deadline = time.monotonic() + 30
        while httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={"api-key": API_KEY},
                         timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "Redis came up, the server did not use it"
            time.sleep(0.2)
    finally:
        server.stop()
        if redis is not None:
            redis.kill()
            redis.wait()


async def test_a_missing_replica_does_not_stop_admission():
    """redis_wait_replicas: 1 against a Redis without a replica: WAIT falls short, the requests are admitted
    anyway (the limit still charged), and later ones do not wait for WAIT again for a while."""
    from support.databases import require_redis

    limiter = RedisLimiter(require_redis(), prefix=f"mw:nowait:{time.time_ns()}:", wait_replicas=1,
                           wait_timeout_ms=50)
    try:
        decisions = [await limiter.acquire([Check("dep:x:req", 60, 100, 1)]) for _ in range(20)]
        assert all(d.admitted for d in decisions)
        assert limiter._unconfirmed_until > 0  # it noticed, and stopped waiting
        refused = await limiter.acquire([Check("dep:x:req", 60, 100, 90)])
        assert not refused.admitted  # 20 charged (and leases), so 90 more do not fit
    finally:
        await limiter.close()


@pytest.mark.parametrize("url, sentinels, service, db, password, sentinel_auth", [
    ("redis+sentinel://h1:26379,[::1]:26380/mw/2", [("h1", 26379), ("::1", 26380)], "mw", 2, None, ()),
    ("redis+sentinel://:p%40ss@a,b:1/svc?sentinel_password=sp", [("a", 26379), ("b", 1)], "svc", 0, "p@ss", ("sp",)),
    ("rediss+sentinel://user:pw@x/m?sentinel_username=su&sentinel_password=sp", [("x", 26379)], "m", 0, "pw",
     ("su", "sp")),
])
def test_sentinel_urls(url, sentinels, service, db, password, sentinel_auth):
    client = RespClient(url)
    assert (client.sentinels, client.service, client.db, client.password, client.sentinel_auth) == (
        sentinels, service, db, password, sentinel_auth)
    assert client.ssl == url.startswith("rediss")


@pytest.mark.parametrize("url", ["redis+sentinel://h1:26379", "redis+sentinel:///mw", "redis+sentinel://::1/mw"])
def test_bad_sentinel_urls_are_refused(url):
    with pytest.raises(ValueError):
        RespClient(url)
