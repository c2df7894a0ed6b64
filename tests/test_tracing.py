"""OpenTelemetry tracing over OTLP/HTTP, exported to a loopback collector: a server span per call continuing the
client's trace, a client span per backend try, and the trace context passed on to the upstream."""

from __future__ import annotations

import httpx
import pytest

from conftest import API_KEY
from support.otlp_collector import OTLPCollector
from support.servers import start_modelworks
from support.waiting import wait_until

USER = [{"role": "user", "content": "Say hello."}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HTTP_TIMEOUT = 60


@pytest.fixture(scope="module")
def collector():
    c = OTLPCollector()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory, upstream, collector):
    u = upstream.url
    config = {
        "backends": {
            "broken": {"type": "openai", "base_url": f"{u}/traced-broken/v1", "model": "fake-model", "region": "westeurope"},
            "fine": {"type": "openai", "base_url": f"{u}/traced-fine/v1", "model": "fake-model", "region": "northeurope"},
        },
        "deployments": {"traced": {"backends": ["broken", "fine"]}, "fine-only": {"backend": "fine"}},
        "routing": {"failure_threshold": 100},
        "tracing": {"enabled": True, "otlp_endpoint": collector.url, "service_name": "mw-test", "export_delay_ms": 50},
    }
    proc = start_modelworks(tmp_path_factory.mktemp("traced"), config, API_KEY, name="traced")
    yield proc
    proc.stop()


def wait_for(collector, predicate, count: int = 1) -> list[dict]:
    """The collected spans that match, once there are `count` of them (spans are exported in the background)."""
    try:
        return wait_until(lambda: [s for s in collector.spans if predicate(s)], lambda found: len(found) >= count,
                          what=f"{count} such span(s)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; all spans: {[(s['name'], s['trace_id']) for s in collector.spans]}") from None


def test_a_call_is_one_trace_from_the_client_through_each_backend_try_to_the_upstream(traced, collector, upstream):
    httpx.post(f"{upstream.url}/_fake/faults/traced-broken", json={"mode": "status", "status": 500},
               timeout=HTTP_TIMEOUT).raise_for_status()
    httpx.delete(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT)
    try:
        for i in range(8):  # until the broken backend was tried first at least once (the pick is random)
            trace = f"{i:02x}" + TRACE_ID[2:]
            r = httpx.post(f"{traced.url}/v1/chat/completions", json={"model": "traced", "messages": USER},
                           headers={"authorization": f"Bearer {API_KEY}",
                                    "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}, timeout=HTTP_TIMEOUT)
            assert r.status_code == 200
            if int(wait_for(collector, lambda s: s["trace_id"] == trace and s["kind"] == 2)[0]["attributes"][
                    "modelworks.attempts"]) == 2:
                break
        else:
            pytest.fail("the broken backend was never tried first in 8 calls")
    finally:
        httpx.delete(f"{upstream.url}/_fake/faults/traced-broken", timeout=HTTP_TIMEOUT)
    server = wait_for(collector, lambda s: s["trace_id"] == trace and s["kind"] == 2)[0]  # SERVER
    assert server["name"] == "chat.completions traced" and server["service"] == "mw-test"
    assert server["parent_id"] == "00f067aa0ba902b7"  # continues the client's trace
    a = server["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "traced"
    assert a["modelworks.backend"] == "fine" and a["cloud.region"] == "northeurope"
    assert a["gen_ai.usage.input_tokens"] == 5 and a["gen_ai.usage.output_tokens"] == 6
    assert a["http.response.status_code"] == 200
    tries = wait_for(collector, lambda s: s["trace_id"] == trace and s["kind"] == 3, count=2)  # CLIENT, per try
    by_backend = {s["attributes"]["modelworks.backend"]: s for s in tries}
    assert set(by_backend) == {"broken", "fine"}
    assert all(s["parent_id"] == server["span_id"] for s in tries)
    assert by_backend["broken"]["attributes"]["modelworks.outcome"] == "error"
    assert by_backend["broken"]["status"] == 2  # STATUS_CODE_ERROR
    assert by_backend["fine"]["attributes"]["modelworks.outcome"] == "ok"
    # each upstream request carried its own try's span as the parent
    sent = [r for r in httpx.get(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).json()["requests"]
            if r["headers"].get("traceparent", "").split("-")[1:2] == [trace]]
    parents = {r["instance"]: r["headers"]["traceparent"].split("-")[2] for r in sent}
    assert parents == {"traced-broken": by_backend["broken"]["span_id"], "traced-fine": by_backend["fine"]["span_id"]}


def test_a_stream_is_traced_to_its_end(traced, collector):
    with httpx.stream("POST", f"{traced.url}/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
                      json={"model": "fine-only", "messages": USER, "stream": True}, timeout=HTTP_TIMEOUT) as r:
        r.read()
    server = wait_for(collector, lambda s: s["kind"] == 2 and s["attributes"].get("gen_ai.request.model")
                      == "fine-only")[0]
    assert server["attributes"]["gen_ai.usage.output_tokens"] == 5  # the fake's five words, from its usage
    assert server["attributes"]["modelworks.backend"] == "fine"


def test_tracing_is_off_by_default():
    from modelworks.settings import settings_from_dict

    assert settings_from_dict({}).tracing.enabled is False
