"""Backend pools: residency, choice, circuit breaking, retries, streams that survive faults, and the metrics that
show it. Faults are injected into loopback fake upstreams (one fake process playing several named upstreams),
a port with nothing listening (a killed upstream) and a server that resets connections."""

from __future__ import annotations

import re
import socket
import time

import httpx
import openai
import pytest

from conftest import API_KEY
from support.reset_server import ResetServer
from support.servers import free_port, start_modelworks
from support.spec import CheckingTransport
from support.waiting import wait_until

USER = [{"role": "user", "content": "Say hello."}]
HTTP_TIMEOUT = 60  # every call to a server or to the fake: a busy machine is slow, not broken

# The servers' own timeouts are generous wherever a healthy answer must never be mistaken for a fault: on a busy
# machine a healthy try may take seconds. Only `timeouts` has short ones, and its faults never end by themselves.
ROUTING = {"max_attempts": 3, "try_timeout_s": 30.0, "stream_idle_timeout_s": 120.0, "failure_threshold": 2,
           "cooldown_s": 600.0, "health_interval_s": 3600.0}


def _openai(base: str, name: str, region: str, zone: str | None = None, **extra) -> dict:
    """A backend on the fake upstream's instance `name` (its own faults, its own request log)."""
    spec = {"type": "openai", "base_url": f"{base}/{name}/v1", "model": "fake-model", "region": region,
            "connect_timeout_s": 10, **extra}
    if zone:
        spec["data_zone"] = zone
    return spec


def _config(backends: dict, deployments: dict, **routing) -> dict:
    return {"backends": backends, "deployments": deployments, "routing": {**ROUTING, **routing},
            "quota": {"default_max_tokens": 100}}


def pool_config(upstream_url: str, dead_url: str, reset_url: str, **routing) -> dict:
    """The pools of `pools`. Every test that injects a fault has a backend (a fake instance) of its own, so that
    no test waits for a circuit that another opened to close again: circuits stay open (cooldown_s 600)."""
    u = upstream_url
    backends = {
        "eu-1": _openai(u, "eu-1", "westeurope", "EU"),
        "eu-2": _openai(u, "eu-2", "swedencentral", "EU"),
        "us-1": _openai(u, "us-1", "eastus", "US"),
        "heavy": _openai(u, "heavy", "westeurope", weight=3),
        "light": _openai(u, "light", "eastus", weight=1),
        "flaky": _openai(u, "flaky", "westeurope"),
        "good": _openai(u, "good", "northeurope"),
        "limited": _openai(u, "limited", "westeurope"),
        "only-429": _openai(u, "only-429", "westeurope"),
        "retry-first": _openai(u, "retry-first", "westeurope"),
        "wire": _openai(u, "wire", "westeurope"),
        "gone": _openai(u, "gone", "westeurope"),
        "cooler": _openai(u, "cooler", "westeurope"),
        "flood": _openai(u, "flood", "westeurope"),
        "dead": {"type": "openai", "base_url": f"{dead_url}/v1", "model": "fake-model", "region": "westeurope",
                 "connect_timeout_s": 10},
        "resetting": {"type": "openai", "base_url": f"{reset_url}/v1", "model": "fake-model",
                      "region": "westeurope", "connect_timeout_s": 10},
        "cap": _openai(u, "cap", "westeurope", "EU"),
        "overflow": _openai(u, "overflow", "swedencentral", "EU"),
    }
    deployments = {
        "weighted": {"backends": ["heavy", "light"]},
        "failover": {"backends": ["flaky", "good"]},
        "killed": {"backends": ["dead", "good"]},
        "reset": {"backends": ["resetting", "good"]},
        "cooling": {"backends": ["limited", "good"]},
        "rate-limited-only": {"backends": ["only-429"]},
        "retry-or-good": {"backends": ["retry-first", "good"]},
        "wire": {"backends": ["wire"]},
        "disconnect": {"backends": ["gone"]},
        "cooling-only": {"backends": ["cooler"]},
        "flooding": {"backends": ["flood"]},
        "eu-chat": {"backends": ["eu-1", "eu-2"], "type": "DataZoneStandard", "data_zone": "EU"},
        "us-chat": {"backends": ["us-1"], "type": "DataZoneStandard", "data_zone": "US"},
        "eu-overflow": {"backends": ["overflow"], "type": "DataZoneStandard", "data_zone": "EU"},
        "ptu": {"backends": ["cap"], "type": "DataZoneProvisioned", "data_zone": "EU", "tpm": 1000,
                "spillover": "eu-overflow"},
        "ptu-strict": {"backends": ["cap"], "type": "DataZoneProvisioned", "data_zone": "EU", "tpm": 1000},
    }
    return _config(backends, deployments, **routing)


def checked_config(upstream_url: str) -> dict:
    """Health checks every 0.3 s, and circuits that close again after a 2 s cooldown. Only the backends its tests
    use: each is checked every round."""
    u = upstream_url
    backends = {"eu-1": _openai(u, "eu-1", "westeurope", "EU"), "eu-2": _openai(u, "eu-2", "swedencentral", "EU"),
                "us-1": _openai(u, "us-1", "eastus", "US"), "sick": _openai(u, "sick", "westeurope"),
                "probed": _openai(u, "probed", "westeurope"), "good": _openai(u, "good", "northeurope")}
    deployments = {"eu-chat": {"backends": ["eu-1", "eu-2"], "type": "DataZoneStandard", "data_zone": "EU"},
                   "us-chat": {"backends": ["us-1"], "type": "DataZoneStandard", "data_zone": "US"},
                   "health": {"backends": ["sick", "good"]},
                   "probing": {"backends": ["probed", "good"]}}
    return _config(backends, deployments, cooldown_s=2.0, health_interval_s=0.3)


BREAKS = ("stall", "die", "malformed")


def timeouts_config(upstream_url: str) -> dict:
    """Short try and idle timeouts, for the tests of those timeouts only: their faults never end by themselves (a
    first byte 2 minutes late, a stall until the client leaves), so a timeout always fires, however slow the
    machine; the healthy answers here (good's) come from an idle fake on loopback."""
    u = upstream_url
    backends = {"slow": _openai(u, "slow", "westeurope"), "good": _openai(u, "good", "northeurope"),
                **{f"breaks-{mode}": _openai(u, f"breaks-{mode}", "westeurope") for mode in BREAKS}}
    deployments = {"slow-first": {"backends": ["slow", "good"]},
                   **{f"breaks-{mode}": {"backends": [f"breaks-{mode}"]} for mode in BREAKS}}
    return _config(backends, deployments, try_timeout_s=5.0, stream_idle_timeout_s=2.0)


@pytest.fixture(scope="module")
def reset_server():
    server = ResetServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pools(tmp_path_factory, upstream, reset_server):
    """A server whose health checks wait an hour: every fault is met by the request path itself."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a killed upstream
    config = pool_config(upstream.url, dead, reset_server.url)
    proc = start_modelworks(tmp_path_factory.mktemp("pools"), config, API_KEY, name="pools")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def checked(tmp_path_factory, upstream):
    proc = start_modelworks(tmp_path_factory.mktemp("checked"), checked_config(upstream.url), API_KEY,
                            name="checked")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def timeouts(tmp_path_factory, upstream):
    proc = start_modelworks(tmp_path_factory.mktemp("timeouts"), timeouts_config(upstream.url), API_KEY,
                            name="timeouts")
    yield proc
    proc.stop()


@pytest.fixture
def fake(upstream):
    """Inject faults into named fake upstreams and read what each received."""
    class Fake:
        def fault(self, instance: str, **spec) -> None:
            httpx.post(f"{upstream.url}/_fake/faults/{instance}", json=spec, timeout=HTTP_TIMEOUT).raise_for_status()

        def clear(self, instance: str) -> None:
            httpx.delete(f"{upstream.url}/_fake/faults/{instance}", timeout=HTTP_TIMEOUT).raise_for_status()

        def received(self, instance: str) -> int:
            return sum(1 for r in self.log()["requests"] if r["instance"] == instance)

        def reset(self) -> None:
            httpx.delete(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).raise_for_status()

        def log(self) -> dict:
            return httpx.get(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).json()

    f = Fake()
    f.reset()
    return f


def sdk(server, recorder) -> openai.OpenAI:
    http = httpx.Client(transport=CheckingTransport(recorder), timeout=HTTP_TIMEOUT)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


def metrics(server) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=HTTP_TIMEOUT).text
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        out[(match.group(1), labels)] = float(match.group(3))
    return out


def metric(values: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


def grew(before: dict, after: dict, name: str, **labels) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


# -- choice -------------------------------------------------------------------------------------------------------------

def test_weights_split_traffic_and_every_answer_names_its_backend_and_region(pools, fake, recorder):
    client = sdk(pools, recorder)
    served = {"heavy": 0, "light": 0}
    for _ in range(80):
        raw = client.chat.completions.with_raw_response.create(model="weighted", messages=USER)
        backend = raw.headers["x-modelworks-backend"]
        served[backend] += 1
        assert raw.headers["x-ms-region"] == {"heavy": "westeurope", "light": "eastus"}[backend]
        assert raw.parse().choices[0].message.content
    assert served["heavy"] + served["light"] == 80
    assert 0.6 <= served["heavy"] / 80 <= 0.9, served  # weight 3 : 1
    assert fake.received("heavy") == served["heavy"] and fake.received("light") == served["light"]
    assert {r["body"]["model"] for r in fake.log()["requests"]} == {"fake-model"}  # each backend's own model name


# -- failures before the first byte -------------------------------------------------------------------------------------

def test_5xx_fails_over_and_opens_the_circuit(pools, fake, recorder):
    client = sdk(pools, recorder)
    fake.fault("flaky", mode="status", status=500)
    try:
        for _ in range(20):
            raw = client.chat.completions.with_raw_response.create(model="failover", messages=USER)
            assert raw.headers["x-modelworks-backend"] == "good"
        assert fake.received("flaky") <= 2  # failure_threshold: then the circuit is open (for the 600 s cooldown)
        m = metrics(pools)
        assert metric(m, "modelworks_backend_circuit_state", backend="flaky") == 2
        assert metric(m, "modelworks_backend_attempts_total", backend="flaky", outcome="error") >= 1
        assert metric(m, "modelworks_backend_healthy", backend="flaky") == 0
    finally:
        fake.clear("flaky")


def test_after_the_cooldown_a_probe_closes_the_circuit(checked, fake, recorder):
    """On `checked`, whose circuits cool down for 2 s."""
    client = sdk(checked, recorder)

    def state() -> float:
        return metric(metrics(checked), "modelworks_backend_circuit_state", backend="probed")

    fake.fault("probed", mode="status", status=500)
    try:
        def failing_call() -> float:  # each call fails over to good; probed's failures open its circuit
            assert client.chat.completions.with_raw_response.create(
                model="probing", messages=USER).headers["x-modelworks-backend"] == "good"
            return state()
        wait_until(failing_call, lambda s: s == 2, what="probed's circuit opened after its 500s")
    finally:
        fake.clear("probed")
    before = fake.received("probed")
    time.sleep(2.1)  # the 2 s cooldown has surely passed (a lower bound): the next pick of probed is a probe

    def call_until_probed() -> int:
        client.chat.completions.create(model="probing", messages=USER)
        return fake.received("probed")
    wait_until(call_until_probed, lambda n: n > before, what="a call to probed after the cooldown (the probe)")
    # the probe's call has been answered (calls are one after another), so its success has been booked
    assert state() == 0
    assert metric(metrics(checked), "modelworks_backend_healthy", backend="probed") == 1


def test_killed_upstream_fails_over(pools, fake, recorder):
    client = sdk(pools, recorder)
    for _ in range(15):
        raw = client.chat.completions.with_raw_response.create(model="killed", messages=USER)
        assert raw.headers["x-modelworks-backend"] == "good"
    m = metrics(pools)
    assert 1 <= metric(m, "modelworks_backend_attempts_total", backend="dead", outcome="error") <= 2
    assert metric(m, "modelworks_backend_circuit_state", backend="dead") == 2


def test_connection_reset_fails_over(pools, fake, recorder, reset_server):
    client = sdk(pools, recorder)
    before = reset_server.connections  # the start-up's readiness probes (health of every backend) connected too
    for _ in range(15):
        assert client.chat.completions.create(model="reset", messages=USER).choices[0].message.content
    # two failures open the circuit; each is the pool's one silent retry on a fresh connection: at most 4
    assert 1 <= reset_server.connections - before <= 4
    assert metric(metrics(pools), "modelworks_backend_attempts_total", backend="resetting", outcome="error") >= 1


def test_upstream_429_cools_that_backend_for_its_retry_after(pools, fake, recorder):
    client = sdk(pools, recorder)
    fake.fault("limited", mode="status", status=429, retry_after=600)
    try:
        for _ in range(15):
            raw = client.chat.completions.with_raw_response.create(model="cooling", messages=USER)
            assert raw.headers["x-modelworks-backend"] == "good"
        assert fake.received("limited") == 1  # told to wait 600 s: not asked again meanwhile
        m = metrics(pools)
        assert metric(m, "modelworks_backend_attempts_total", backend="limited", outcome="rate_limited") >= 1
        assert metric(m, "modelworks_backend_circuit_state", backend="limited") == 0  # a 429 is not a failure
    finally:
        fake.clear("limited")


def test_only_429s_left_means_429_with_retry_after(pools, fake, recorder):
    fake.fault("only-429", mode="status", status=429, retry_after=3)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            sdk(pools, recorder).chat.completions.create(model="rate-limited-only", messages=USER)
    finally:
        fake.clear("only-429")
    assert info.value.response.headers["retry-after"] == "3"  # the upstream's own wait, passed on
    assert info.value.response.headers["retry-after-ms"] == "3000"
    assert info.value.response.headers["x-modelworks-backend"] == "only-429"  # an error names its backend too


def test_slow_first_byte_is_a_timed_out_try_and_another_backend_answers(timeouts, fake, recorder):
    """On `timeouts`, where a try waits 5 s."""
    client = sdk(timeouts, recorder)
    fake.fault("slow", mode="slow_first_byte", seconds=120)  # far past any try: each try of slow times out
    try:
        for _ in range(12):  # the pick is random: 12 tries make missing the slow backend a 1-in-4,096 chance
            raw = client.chat.completions.with_raw_response.create(model="slow-first", messages=USER)
            assert raw.headers["x-modelworks-backend"] == "good"
        assert fake.received("slow") <= 2  # two timed-out tries opened its circuit: it was not waited for again
        assert metric(metrics(timeouts), "modelworks_backend_attempts_total", backend="slow", outcome="timeout") >= 1
    finally:
        fake.clear("slow")


def test_a_stream_retries_before_its_first_byte(pools, fake, recorder):
    fake.fault("retry-first", mode="status", status=503)
    try:
        client = sdk(pools, recorder)
        for _ in range(3):
            stream = client.chat.completions.create(model="retry-or-good", messages=USER, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        fake.clear("retry-first")


# -- faults after the first byte ------------------------------------------------------------------------------------------

def _stream_until_error(client, model: str) -> tuple[str, BaseException | None]:
    text, error = "", None
    try:
        for chunk in client.chat.completions.create(model=model, messages=USER, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    except openai.APIError as exc:
        error = exc
    return text, error


@pytest.mark.parametrize("mode", BREAKS)
def test_a_stream_that_breaks_mid_way_ends_with_an_error_event_never_a_hang(timeouts, fake, recorder, mode):
    """On `timeouts` (a stream idle for 2 s is ended); each mode on a backend of its own."""
    name = f"breaks-{mode}"
    fake.fault(name, mode=mode, after=3)
    try:
        before = metrics(timeouts)
        text, error = _stream_until_error(sdk(timeouts, recorder), name)
    finally:
        fake.clear(name)
    assert text == "Hello from the"  # the three words sent before the fault reached the client
    # ended by the server's error event (not by the client giving up waiting), saying why
    assert isinstance(error, openai.APIError) and not isinstance(error, openai.APITimeoutError), repr(error)
    expected = {"stall": "sent nothing for 2s", "die": "broke off the stream",
                "malformed": "sent a malformed stream event"}[mode]
    assert expected in str(error), repr(error)
    assert fake.received("good") == 0  # never retried after the first byte
    # what was delivered is metered (booked before the error event was sent)
    after = metrics(timeouts)
    assert grew(before, after, "modelworks_completion_tokens_total", deployment=name) == 3
    outcome = {"stall": "stalled", "die": "broken", "malformed": "broken"}[mode]
    assert metric(after, "modelworks_backend_attempts_total", backend=name, outcome=outcome) >= 1


def test_the_error_event_and_the_end_of_the_stream_on_the_wire(pools, fake, specs):
    """Raw SSE: content events, one error event in the OpenAI envelope, then the body ends (no hang)."""
    fake.fault("wire", mode="die", after=2)
    try:
        with httpx.stream("POST", f"{pools.url}/v1/chat/completions", timeout=HTTP_TIMEOUT,
                          headers={"authorization": f"Bearer {API_KEY}"},
                          json={"model": "wire", "messages": USER, "stream": True}) as r:
            raw = r.read()
    finally:
        fake.clear("wire")
    events = specs.check_sse("/v1/chat/completions", raw)
    assert "error" in events[-1] and events[-1]["error"]["type"] == "server_error"
    assert any(e.get("choices") for e in events[:-1])


def test_client_disconnect_cancels_the_upstream(pools, fake):
    """The upstream stalls after two words and never ends by itself; `pools` ends an idle stream only after 120 s:
    the upstream's stream is cut because the client left, and the call is metered for what it was sent."""
    from support.raw_http import open_stream

    fake.fault("gone", mode="stall", after=2)
    try:
        before = metrics(pools)
        sock = open_stream(pools.url, API_KEY, {"model": "disconnect", "messages": USER}, events=3)
        sock.close()
        wait_until(lambda: fake.log()["cut_streams"], lambda n: n >= 1,
                   what="the upstream's stream cut after the client left")
    finally:
        fake.clear("gone")
    log = fake.log()
    assert log["cut_streams"] == 1 and log["finished_streams"] == 0
    after = wait_until(lambda: metrics(pools), lambda m: grew(before, m, "modelworks_requests_total",
                                                                 deployment="disconnect") >= 1,
                       what="the cut call metered")
    # metered: one call, with the two words it was sent
    assert grew(before, after, "modelworks_requests_total", deployment="disconnect", backend="gone",
                status="200") == 1
    assert grew(before, after, "modelworks_completion_tokens_total", deployment="disconnect") == 2
    # cut by the disconnect, not ended by the idle timeout
    assert grew(before, after, "modelworks_backend_attempts_total", backend="gone", outcome="stalled") == 0


# -- residency --------------------------------------------------------------------------------------------------------------

def _healthy(server, backend: str) -> float:
    return metric(metrics(server), "modelworks_backend_healthy", backend=backend)


def test_an_eu_deployment_answers_503_rather_than_leave_the_eu(checked, fake, recorder):
    client = sdk(checked, recorder)
    raw = client.chat.completions.with_raw_response.create(model="eu-chat", messages=USER)
    assert raw.headers["x-ms-region"] in ("westeurope", "swedencentral")
    for name in ("eu-1", "eu-2"):
        fake.fault(name, mode="status", status=500, health=True)
    try:
        for name in ("eu-1", "eu-2"):  # health checks every 0.3 s take both EU backends out
            wait_until(lambda: _healthy(checked, name), lambda v: v == 0,
                       what=f"{name} taken out by health checks")
        fake.reset()
        for _ in range(5):
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="eu-chat", messages=USER)
            assert info.value.status_code == 503
            assert "No healthy backend in data zone EU" in info.value.message
        us = client.chat.completions.with_raw_response.create(model="us-chat", messages=USER)
        assert us.headers["x-ms-region"] == "eastus"  # the US backend is healthy all along
        assert fake.received("eu-1") == fake.received("eu-2") == 0
        assert all(r["instance"] == "us-1" for r in fake.log()["requests"])  # nothing of eu-chat left the EU
        m = metrics(checked)
        assert metric(m, "modelworks_backend_healthy", backend="eu-1", data_zone="EU") == 0
        assert metric(m, "modelworks_backend_healthy", backend="us-1", data_zone="US") == 1
        assert metric(m, "modelworks_requests_total", deployment="eu-chat", backend="none", status="503") == 5
    finally:
        for name in ("eu-1", "eu-2"):
            fake.clear(name)


def test_health_checks_take_a_backend_out_and_bring_it_back(checked, fake, recorder):
    client = sdk(checked, recorder)
    fake.fault("sick", mode="status", status=500, health=True)
    try:
        wait_until(lambda: _healthy(checked, "sick"), lambda v: v == 0, what="sick taken out by health checks")
        fake.reset()
        for _ in range(10):
            raw = client.chat.completions.with_raw_response.create(model="health", messages=USER)
            assert raw.headers["x-modelworks-backend"] == "good"
        assert fake.received("sick") == 0
    finally:
        fake.clear("sick")
    wait_until(lambda: _healthy(checked, "sick"), lambda v: v == 1, what="sick brought back by health checks")


def test_a_backend_outside_the_zone_is_refused_by_config_and_admin_api(pools):
    from modelworks.errors import ConfigError
    from modelworks.settings import settings_from_dict

    config = pool_config("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", health_interval_s=10)
    config["deployments"]["eu-chat"]["backends"].append("us-1")
    with pytest.raises(ConfigError, match="backend 'us-1' is in data zone US"):
        settings_from_dict(config)
    headers = {"authorization": f"Bearer {API_KEY}"}
    r = httpx.post(f"{pools.url}/admin/v1/deployments", headers=headers, timeout=HTTP_TIMEOUT, json={
        "name": "eu-leaky", "backends": ["eu-1", "us-1"], "deployment_type": "DataZoneStandard", "data_zone": "EU"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "backends"
    r = httpx.post(f"{pools.url}/admin/v1/deployments", headers=headers, timeout=HTTP_TIMEOUT, json={
        "name": "eu-nozone", "backends": ["eu-1"], "deployment_type": "DataZoneStandard"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_zone"
    r = httpx.patch(f"{pools.url}/admin/v1/deployments/weighted", headers=headers, timeout=HTTP_TIMEOUT,
                    json={"backends": ["us-1"]})
    assert r.status_code == 400  # a config deployment: changed in the config file only


# -- provisioned ---------------------------------------------------------------------------------------------------------------

def test_provisioned_over_capacity_is_a_fast_429_or_spills_over(pools, fake, recorder):
    client = sdk(pools, recorder)
    # 1,000 TPM of capacity; a call charges its prompt (~10 tokens) and max_tokens (990) at arrival, and is
    # corrected to what it used (11) when it ends: the second of two such calls does not fit
    first = client.chat.completions.with_raw_response.create(model="ptu-strict", messages=USER, max_tokens=990)
    assert first.headers["x-modelworks-backend"] == "cap"
    asked = fake.received("cap")
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="ptu-strict", messages=USER, max_tokens=990)
    assert fake.received("cap") == asked  # fast: refused at arrival, the backend never asked
    assert int(info.value.response.headers["retry-after-ms"]) >= 1000
    client.chat.completions.create(model="ptu", messages=USER, max_tokens=990)
    spilled = client.chat.completions.with_raw_response.create(model="ptu", messages=USER, max_tokens=990)
    assert spilled.headers["x-modelworks-spillover-from"] == "ptu"
    assert spilled.headers["x-modelworks-backend"] == "overflow"
    assert spilled.headers["x-ms-region"] == "swedencentral"
    m = metrics(pools)
    assert metric(m, "modelworks_limiter_rejections_total", deployment="ptu-strict", limit="deployment_tokens") == 1
    assert metric(m, "modelworks_requests_total", deployment="eu-overflow", backend="overflow", status="200") == 1


# -- metrics ---------------------------------------------------------------------------------------------------------------------

def test_metrics_cover_requests_tokens_latency_and_backends(pools, recorder):
    client = sdk(pools, recorder)
    client.chat.completions.create(model="weighted", messages=USER)
    for _ in client.chat.completions.create(model="weighted", messages=USER, stream=True):
        pass
    r = httpx.get(f"{pools.url}/metrics", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metrics(pools)
    assert metric(m, "modelworks_requests_total", deployment="weighted", status="200") >= 2
    assert metric(m, "modelworks_prompt_tokens_total", deployment="weighted") > 0
    assert metric(m, "modelworks_completion_tokens_total", deployment="weighted") > 0
    assert metric(m, "modelworks_time_to_first_token_seconds_count", deployment="weighted") >= 1
    assert metric(m, "modelworks_time_between_tokens_seconds_count", deployment="weighted") >= 1
    assert metric(m, "modelworks_output_tokens_per_second_count", deployment="weighted") >= 1
    assert metric(m, "modelworks_request_duration_seconds_count", deployment="weighted") >= 2
    assert metric(m, "modelworks_backend_healthy", backend="heavy", region="westeurope", provider="openai") == 1
    for name in ("modelworks_queue_depth", "modelworks_backend_in_flight", "modelworks_backend_circuit_state"):
        assert any(n == name for n, _ in m), name
    for line in r.text.splitlines():  # the exposition format: HELP and TYPE for every family
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("counter", "gauge", "histogram")


def test_a_pool_that_is_only_cooling_answers_429_not_503(pools, fake, recorder):
    client = sdk(pools, recorder)
    fake.fault("cooler", mode="status", status=429, retry_after=60)
    try:
        with pytest.raises(openai.RateLimitError) as info:  # the upstream's own 429
            client.chat.completions.create(model="cooling-only", messages=USER)
        assert info.value.response.headers["retry-after"] == "60"
        with pytest.raises(openai.RateLimitError) as info:  # then ours while it cools: what is left of its 60 s
            client.chat.completions.create(model="cooling-only", messages=USER)
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
        assert fake.received("cooler") == 1
    finally:
        fake.clear("cooler")


def test_a_client_that_does_not_read_holds_back_the_upstream_not_the_servers_memory(pools, fake):
    """~15 MB of stream from a fast upstream to a client that reads nothing: the server must not take it all in."""
    from support.raw_http import open_stream

    def rss_mib() -> float:
        for line in open(f"/proc/{pools.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    fake.fault("flood", mode="flood", events=100_000)
    before = rss_mib()
    sock = open_stream(pools.url, API_KEY, {"model": "flooding", "messages": USER}, events=2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        time.sleep(3)  # the client reads nothing
        log = fake.log()
        assert log["finished_streams"] == 0  # the upstream is held back by the full pipes
        assert rss_mib() - before < 10  # not the ~15 MB (and much more as Python objects) it would take to hold
    finally:
        sock.close()
        fake.clear("flood")
    wait_until(lambda: fake.log()["cut_streams"], lambda n: n >= 1,
               what="the upstream's stream cut after the client left")
    assert fake.log()["cut_streams"] == 1


def test_one_deployment_over_the_embedded_model_an_openai_and_an_azure_upstream(client):
    seen = set()
    for _ in range(30):
        raw = client.chat.completions.with_raw_response.create(model="mixed", messages=USER, max_tokens=4)
        assert raw.parse().choices[0].message.content is not None
        assert raw.headers["x-ms-region"] == "local"  # none of the three is tagged with a region
        seen.add(raw.headers["x-modelworks-backend"])
    assert seen == {"gemma", "upstream", "azure-upstream"}
