"""Start real processes on loopback: the Modelworks server and the fake upstream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, args: list[str], url: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.log_path = log_path
        self.log = open(log_path, "wb")
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, path: str, timeout: float = 120.0, status: int = 200) -> None:
        """Poll `path` until it answers `status` (a probe may take up to 30 s on a busy machine)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.output()}")
            try:
                answered = httpx.get(self.url + path, timeout=30).status_code
                if answered == status:
                    return
                last = f"status {answered}"
            except httpx.HTTPError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            time.sleep(0.1)
        message = f"{path} did not answer {status} within {timeout}s (last: {last}):\n{self.output()}"
        self.stop()  # a server that is not ready is not left running behind the failed test
        raise RuntimeError(message)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, grace: float = 10.0) -> None:
        """Terminate; kill what has not exited after `grace` seconds (never a failure: the test is over)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_fake_upstream(tmp: Path) -> Process:
    port = free_port()
    proc = Process([sys.executable, "-m", "modelworks.testing.fake_upstream", "--port", str(port)],
                   f"http://127.0.0.1:{port}", tmp / "fake-upstream.log")
    proc.wait_ready("/v1/models")
    return proc


def start_modelworks(tmp: Path, config: dict, api_key: str, name: str = "modelworks") -> Process:
    port = free_port()
    # a short drain unless the test sets one: `stop` (SIGTERM) would otherwise wait for work in flight for 20 s
    server = {"drain_timeout_s": 2, **config.get("server", {}), "port": port, "data_dir": str(tmp / f"{name}-data")}
    config = {**config, "server": server}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = Process([sys.executable, "-m", "modelworks", "serve", "--config", str(path)],
                   f"http://127.0.0.1:{port}", tmp / f"{name}.log", env={"MODELWORKS_API_KEY": api_key})
    proc.wait_ready("/readyz")
    return proc


def start_mcp_server(tmp: Path) -> Process:
    """The MCP test server (`modelworks.testing.mcp_server`) on loopback; its MCP endpoint is `url + "/mcp"`."""
    port = free_port()
    proc = Process([sys.executable, "-m", "modelworks.testing.mcp_server", "--port", str(port)],
                   f"http://127.0.0.1:{port}", tmp / "mcp-server.log")
    proc.wait_ready("/_calls")
    return proc
