"""The container image and the compose file (issue 15), built and run with Debian's podman, offline from any
registry: `deploy/image/build.sh` (as `make image`), then `deploy/image/image_test.py` (`make image-test`: as an
arbitrary UID, ready, a chat, SIGTERM, exit 0) and `deploy/compose/compose_test.py` (`make compose-test`: two
gateways, PostgreSQL, Redis and the migration; shared limits, usage, keys and audit; drained to exit 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.databases import require_services

ROOT = Path(__file__).resolve().parent.parent
WHEELS = Path(os.environ.get("MODELWORKS_WHEELS", Path.home() / ".cache" / "modelworks" / "wheels" / "native-no-amx"))
IMAGE = "localhost/modelworks:dev"


def _run(args: list[str], timeout: float) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{args[1]} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing or not any(WHEELS.glob("llama_cpp_python-*.whl")):
        message = f"cannot build the image here: missing {missing or 'the llama-cpp-python wheel in ' + str(WHEELS)}"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    _run(["bash", str(ROOT / "deploy" / "image" / "build.sh"), sys.executable, str(WHEELS), IMAGE], timeout=2400)
    return IMAGE


def test_the_image_serves_as_any_user_and_drains_on_sigterm(image):
    print(_run([sys.executable, str(ROOT / "deploy" / "image" / "image_test.py"), "--image", image], timeout=900))


def test_compose_runs_two_gateways_that_share_limits_usage_and_keys(image):
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        if require_services():
            pytest.fail("podman-compose is not installed (it is in the test extras)")
        pytest.skip("podman-compose is not installed")
    print(_run([sys.executable, str(ROOT / "deploy" / "compose" / "compose_test.py"), "--image", image],
               timeout=1500))
