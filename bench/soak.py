"""Soak: minutes of mixed streaming and non-streaming traffic through a pool of upstreams while a schedule of
faults plays on them. Reports what a long run must not show: lost usage records, hung requests, and resident
memory that keeps growing. Part of `make bench` (section `soak`, 10 minutes); alone:
`python bench/soak.py --minutes 2`.

Lost records: every request that reached the server (each got an HTTP status) must have exactly one usage record
once the server has stopped (SIGTERM flushes the write-ahead log). Hung: a request with no answer after 30 s
(the stream idle timeout is 2 s, so none should come near). Memory: the server's VmRSS after the warm-up (the
first tenth of the run) against its last reading.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.servers import Process, free_port, start_modelworks  # noqa: E402

KEY = "mw-soak-key-0123456789"
USER = [{"role": "user", "content": "Tell me about the sea."}]
# (instance, fault) pairs, one every `period` seconds, each cleared before the next
FAULTS = [
    ("a", {"mode": "status", "status": 500}),
    ("b", {"mode": "status", "status": 429, "retry_after": 2}),
    ("a", {"mode": "slow_first_byte", "seconds": 5}),
    ("b", {"mode": "stall", "after": 3}),
    ("a", {"mode": "die", "after": 3}),
    ("b", {"mode": "malformed", "after": 2}),
    ("c", {"mode": "status", "status": 503, "health": True}),
    (None, None),
]


def config(upstream_url: str) -> dict:
    def up(name: str, region: str) -> dict:
        return {"type": "openai", "base_url": f"{upstream_url}/{name}/v1", "model": "slow-soak", "region": region,
                "data_zone": "EU", "connect_timeout_s": 1}
    return {"backends": {"a": up("a", "westeurope"), "b": up("b", "swedencentral"), "c": up("c", "francecentral")},
            "deployments": {"soak": {"backends": ["a", "b", "c"], "type": "DataZoneStandard", "data_zone": "EU",
                                     "tpm": 100_000_000}},
            "routing": {"try_timeout_s": 2, "stream_idle_timeout_s": 2, "failure_threshold": 3, "cooldown_s": 3,
                        "health_interval_s": 1},
            "metering": {"flush_seconds": 1}}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _traffic(url: str, stop: float, stats: dict, worker: int) -> None:
    rng = random.Random(worker)
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"authorization": f"Bearer {KEY}"}) as http:
        while time.monotonic() < stop:
            stream = rng.random() < 0.5
            body = {"model": "soak", "messages": USER, "stream": stream, "max_tokens": 50}
            try:
                if stream:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        tail = b""
                        async for chunk in r.aiter_bytes():
                            tail = (tail + chunk)[-2048:]
                    if r.status_code == 200:
                        ended = "stream_error_event" if b'data: {"error"' in tail else (
                            "stream_done" if tail.rstrip().endswith(b"data: [DONE]") else "stream_cut")
                        stats[ended] = stats.get(ended, 0) + 1
                else:
                    r = await http.post("/v1/chat/completions", json=body)
                stats["answered"] += 1
                stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
            except httpx.TimeoutException:
                stats["hung"] += 1
                stats["answered"] += 1  # it reached the server: it is metered when the server sees us leave
            except httpx.HTTPError as exc:
                stats["transport_errors"][type(exc).__name__] = stats["transport_errors"].get(type(exc).__name__, 0) + 1


async def _faults(upstream: str, stop: float, period: float, log: list) -> None:
    async with httpx.AsyncClient(base_url=upstream) as http:
        i = 0
        while time.monotonic() < stop:
            instance, fault = FAULTS[i % len(FAULTS)]
            for name in "abc":
                await http.delete(f"/_fake/faults/{name}")
            if instance:
                await http.post(f"/_fake/faults/{instance}", json=fault)
            log.append((round(time.monotonic(), 1), instance, fault))
            i += 1
            await asyncio.sleep(min(period, max(0.0, stop - time.monotonic())))
        for name in "abc":
            await http.delete(f"/_fake/faults/{name}")


def run(tmp: Path, upstream_url: str, minutes: float, concurrency: int = 8, period: float = 15.0) -> dict:
    server = start_modelworks(tmp, config(upstream_url), KEY, name="soak")
    pid = server.proc.pid
    stats = {"answered": 0, "hung": 0, "status": {}, "transport_errors": {}}
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    stop = started + minutes * 60

    async def main() -> None:
        async def sample() -> None:
            while time.monotonic() < stop:
                samples.append((time.monotonic() - started, rss_kib(pid)))
                await asyncio.sleep(5)
        faults: list = []
        await asyncio.gather(sample(), _faults(upstream_url, stop, period, faults),
                             *(_traffic(server.url, stop, stats, w) for w in range(concurrency)))
    try:
        asyncio.run(main())
        samples.append((time.monotonic() - started, rss_kib(pid)))
        time.sleep(2)
    finally:
        server.stop()  # SIGTERM: the server flushes its usage log before it exits
    db = tmp / "soak-data" / "modelworks.db"
    with sqlite3.connect(db) as conn:
        records = conn.execute("SELECT count(*) FROM usage_records WHERE deployment = 'soak'").fetchone()[0]
    warm = [kib for t, kib in samples if t >= minutes * 6]  # after the first tenth
    rss_start, rss_end = (warm[0], warm[-1]) if warm else (samples[0][1], samples[-1][1])
    return {"minutes": minutes, "concurrency": concurrency, "requests": stats["answered"],
            "usage_records": records, "lost_records": stats["answered"] - records, "hung": stats["hung"],
            "status": stats["status"], "transport_errors": stats["transport_errors"],
            "streams": {k: stats.get(k, 0) for k in ("stream_done", "stream_error_event", "stream_cut")},
            "rss_kib_after_warmup": rss_start, "rss_kib_end": rss_end,
            "rss_growth": round(rss_end / rss_start - 1, 4) if rss_start else None,
            "rss_samples_kib": [kib for _, kib in samples]}


def print_result(r: dict) -> None:
    print(f"\n== Soak: {r['minutes']:g} min, {r['concurrency']} clients, half streaming, faults every 15 s ==")
    print(f"  requests answered       {r['requests']}  (by status: {r['status']})")
    s = r["streams"]
    print(f"  streams                 {s['stream_done']} ended [DONE], {s['stream_error_event']} with an error "
          f"event after a mid-stream fault, {s['stream_cut']} cut without either (target 0)")
    print(f"  usage records           {r['usage_records']}  -> lost {r['lost_records']} (target 0)")
    print(f"  hung (no answer in 30s) {r['hung']} (target 0); transport errors {r['transport_errors'] or 'none'}")
    print(f"  server RSS              {r['rss_kib_after_warmup'] / 1024:.1f} MiB after warm-up -> "
          f"{r['rss_kib_end'] / 1024:.1f} MiB at the end ({r['rss_growth'] * 100:+.1f}%, target within 10%)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mw-soak-"))
    port = free_port()
    upstream = Process([sys.executable, "-m", "modelworks.testing.fake_upstream", "--port", str(port)],
                       f"http://127.0.0.1:{port}", tmp / "upstream.log")
    upstream.wait_ready("/v1/models")
    try:
        result = run(tmp, upstream.url, args.minutes, args.concurrency)
    finally:
        upstream.stop()
    print_result(result)
    ok = result["lost_records"] == 0 and result["hung"] == 0 and result["streams"]["stream_cut"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
