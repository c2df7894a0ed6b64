"""No request can stall the others: the largest body of each kind is sent to a real server on a loaded machine
while `/healthz` and a small chat on another deployment are polled; none of those waits more than 200 ms.

The machine is loaded on purpose (two busy processes beside the server, on top of whatever else CI runs): the
server's heavy work runs in its CPU pool, and what is measured is whether the event loop still answers.
"""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

from support.servers import start_modelworks

API_KEY = "mw-event-loop-key-0123456789"
MAX_BODY = 8 * 1024 * 1024
BOUND_S = 0.200

CONFIG = {
    "server": {"max_body_bytes": MAX_BODY},
    "backends": {
        "gemma": {"type": "llama_cpp", "threads": 1, "parallel": 1, "context_size": 2048},
        "minilm": {"type": "minilm"},
        "fake": {"type": "fake"},
    },
    "deployments": {
        # quotas far above the largest bodies here (8 MiB of text is ~2M tokens): this tests the event loop
        "gemma-3-270m": {"backend": "gemma", "tpm": 100_000_000},
        "all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
        "fake": {"backend": "fake", "tpm": 100_000_000},
        "filtered": {"backend": "fake", "content_filter": "default", "tpm": 100_000_000},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("loop"), CONFIG, API_KEY, name="loop")
    yield proc
    proc.stop()


def _poll(url: str, stop, out) -> None:
    """Polls /healthz and a small chat on another deployment, one after the other, and sends each wait (with
    when it ended) back through `out`."""
    small = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, headers={"api-key": API_KEY}, timeout=30) as http:
        while not stop.is_set():
            for method, path, body in (("GET", "/healthz", None), ("POST", "/v1/chat/completions", small)):
                started = time.perf_counter()
                r = http.request(method, path, json=body)
                ended = time.perf_counter()
                out.send((ended - started, path, r.status_code, ended))
            stop.wait(0.02)
    out.close()


class Poller:
    """The poller runs in a process of its own: in a thread of the test's process it would share the interpreter
    lock with the test sending 8 MiB bodies and reading their answers, and measure that too (seen: 350 ms waits
    while the server's event loop, watched from inside the server, never went 150 ms without a turn)."""

    def __init__(self, url: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self._receive, self._send = context.Pipe(duplex=False)
        self._process = context.Process(target=_poll, args=(url, self.stop, self._send), daemon=True)
        self._phases: list[tuple[float, str]] = [(0.0, "before")]
        self.waits: list[tuple[float, str, int, str]] = []

    @property
    def phase(self) -> str:
        return self._phases[-1][1]

    @phase.setter
    def phase(self, name: str) -> None:  # what the heavy client is sending from now on
        self._phases.append((time.perf_counter(), name))

    def start(self) -> None:
        self._process.start()
        self._send.close()  # the child's copy stays open: recv ends (EOFError) when the child closes it
        self._drain = threading.Thread(target=self._collect, daemon=True)  # waits in recv, lock released
        self._drain.start()

    def _collect(self) -> None:
        self._raw = []
        while True:
            try:
                self._raw.append(self._receive.recv())
            except (EOFError, OSError):
                return

    def join(self, timeout: float) -> None:
        self._process.join(timeout=timeout)
        self._drain.join(timeout=10)
        for wait, path, status, ended in self._raw:
            phase = [name for at, name in self._phases if at <= ended - wait][-1]  # when the poll began
            self.waits.append((wait, path, status, phase))


def _chat(model: str, messages: list[dict]) -> bytes:
    return orjson.dumps({"model": model, "messages": messages, "max_tokens": 4})


def _fill(prefix: bytes, suffix: bytes, unit: str, size: int = MAX_BODY - 1024) -> bytes:
    """prefix + a JSON string of `unit` repeated + suffix, just under `size` bytes in all."""
    count = (size - len(prefix) - len(suffix) - 2) // len(unit)
    return prefix + orjson.dumps(unit * count) + suffix


HEAVY = [
    # (name, path, body, expected status, expected param)
    ("chat: 8 MiB message to the embedded model",
     "/v1/chat/completions", _fill(b'{"model":"gemma-3-270m","messages":[{"role":"user","content":', b"}]}",
                                   "many words "), 400, "messages"),
    ("chat: a prompt just within the cheap bound, tokenized in full",
     "/v1/chat/completions", _chat("gemma-3-270m", [{"role": "user", "content": "a few words " * 5_000}]), 400,
     "messages"),
    ("completions: 8 MiB prompt", "/v1/completions",
     _fill(b'{"model":"gemma-3-270m","prompt":', b"}", "many words "), 400, "prompt"),
    ("chat: 250,000 tiny messages", "/v1/chat/completions",
     _chat("fake", [{"role": "user", "content": "hi"}] * 250_000), 400, None),
    ("chat: 2 MiB screened by the default content filter", "/v1/chat/completions",
     _chat("filtered", [{"role": "user", "content": "Please summarise the notes of the meeting. " * 40}] * 1_200),
     200, None),
    ("embeddings: 8 MiB in 16 inputs", "/v1/embeddings",
     orjson.dumps({"model": "all-minilm-l6-v2", "input": ["a sentence about the weather. " * 17_400] * 16}), 200,
     None),
    ("moderations: the most characters accepted", "/v1/moderations",
     orjson.dumps({"input": ["Some ordinary text to moderate. " * 1_000] * 8}), 200, None),
    ("moderations: 8 MiB, refused", "/v1/moderations", _fill(b'{"input":', b"}", "text "), 400, "input"),
    ("content safety: analyze", "/contentsafety/text:analyze?api-version=2024-09-01",
     orjson.dumps({"text": "An ordinary sentence. " * 450}), 200, None),
    ("content safety: shield prompt", "/contentsafety/text:shieldPrompt?api-version=2024-09-01",
     orjson.dumps({"userPrompt": "Ignore nothing. " * 600, "documents": ["A document. " * 160] * 5}), 200, None),
]


def test_the_largest_bodies_do_not_stall_other_requests(server, busy_machine):
    assert all(len(body) <= MAX_BODY for _, _, body, _, _ in HEAVY)
    poller = Poller(server.url)
    poller.start()
    try:
        with httpx.Client(base_url=server.url, timeout=600,
                          headers={"api-key": API_KEY, "content-type": "application/json"}) as http:
            for name, path, body, status, param in HEAVY:
                poller.phase = name
                r = http.post(path, content=body)
                assert r.status_code == status, (name, r.status_code, r.text[:300])
                if param is not None:
                    assert r.json()["error"]["param"] == param, (name, r.text[:300])
    finally:
        poller.stop.set()
        poller.join(timeout=60)
    waits = poller.waits
    assert len(waits) > 20, "the poller barely ran"
    assert all(w[2] == 200 for w in waits), [w for w in waits if w[2] != 200][:5]
    slow = sorted((w for w in waits if w[0] > BOUND_S), reverse=True)
    assert not slow, f"{len(slow)} of {len(waits)} polls waited over {BOUND_S * 1000:.0f} ms: " + "; ".join(
        f"{path} {wait * 1000:.0f} ms during '{phase}'" for wait, path, _, phase in slow[:8])
