"""Slow, idle and greedy clients against a real server process (`modelworks.api.server`): idle connections, a head
or body that trickles in, a client that stops reading its stream and more connections than the limit. None of
them holds the server, and a normal request answers all the while.

The machine may be busy: every wait is on a condition with a generous deadline, and the only timing asserted is
that the server did not cut a client before its limit (a busy machine can only make that later)."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import orjson
import pytest

from conftest import API_KEY
from support.servers import start_modelworks

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 6.0
BODY_IDLE_TIMEOUT = 3.0  # far above the trickle's 0.05 s: a stalled test thread does not look idle
KEEP_ALIVE = 3.0
WRITE_TIMEOUT = 2.0
EARLY = 0.9  # a cut is "not early" at 90% of its limit: timer and clock granularity
PROMPT = 5.0  # a normal request beside the slow clients answers within this (generous, for a busy machine)
DEADLINE = 30.0

TCP_ESTABLISHED, TCP_CLOSE, TCP_CLOSE_WAIT = 1, 7, 8
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _config(**server) -> dict:
    return {
        "server": server,
        "backends": {"fake": {"type": "fake"},
                     "long": {"type": "fake", "reply": " ".join(["word"] * 100_000)}},
        "deployments": {"fake": {"backend": "fake"}, "long": {"backend": "long"}},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("slow-clients"), _config(
        header_timeout_s=HEADER_TIMEOUT, body_timeout_s=BODY_TIMEOUT, body_idle_timeout_s=BODY_IDLE_TIMEOUT,
        keep_alive_timeout_s=KEEP_ALIVE, write_timeout_s=WRITE_TIMEOUT, max_header_bytes=4096), API_KEY)
    yield proc
    proc.stop()


# Raw sockets


def _connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:  # before connect: the window the client offers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return sock


def _state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def _closed_by_server(sock: socket.socket) -> bool:
    """The server sent FIN (CLOSE_WAIT) or RST (CLOSE); the client has not closed its side."""
    return _state(sock) in (TCP_CLOSE_WAIT, TCP_CLOSE)


def _wait_for(condition, timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _wait_closed(socks: list[socket.socket], timeout: float = DEADLINE) -> dict[socket.socket, float]:
    """Poll until the server has closed every socket; when each was first seen closed."""
    seen: dict[socket.socket, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(socks):
        now = time.monotonic()
        for sock in socks:
            if sock not in seen and _closed_by_server(sock):
                seen[sock] = now
        if now > deadline:
            raise AssertionError(f"{len(socks) - len(seen)} of {len(socks)} connections still open after {timeout}s")
        time.sleep(0.05)
    return seen


def _read_all(sock: socket.socket) -> bytes:
    """What the server sent before it closed (the socket is closed by the server already)."""
    sock.settimeout(DEADLINE)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole answer with a content-length from a kept-alive connection."""
    sock.settimeout(DEADLINE)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def _parse_answer(data: bytes) -> tuple[int, dict[str, str], dict]:
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, orjson.loads(body)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def _normal_requests(url: str) -> None:
    """/healthz and a chat completion on a new connection each, promptly."""
    for method, path, body in (("GET", "/healthz", None), ("POST", "/v1/chat/completions", CHAT)):
        started = time.monotonic()
        response = httpx.request(method, url + path, json=body, headers=AUTH, timeout=DEADLINE)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < PROMPT, f"{path} took {time.monotonic() - started:.1f}s"


class _Trickle(threading.Thread):
    """Sends `data` one byte every `interval` seconds until done or the server closes the connection."""

    def __init__(self, sock: socket.socket, data: bytes, interval: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.interval = sock, data, interval
        self.stop = threading.Event()

    def run(self) -> None:
        for i in range(len(self.data)):
            if self.stop.wait(self.interval) or _state(self.sock) != TCP_ESTABLISHED:
                return
            try:
                self.sock.send(self.data[i:i + 1])
            except OSError:
                return


def _chat_head(body_length: int) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + API_KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n" % body_length)


# The tests


def test_idle_connections_do_not_hold_the_server_and_are_closed(server):
    """300 idle connections (half new and silent, half kept alive after one request): normal requests answer, the
    server closes the silent ones after the header timeout and the kept ones after the keep-alive timeout."""
    silent, kept = [], []
    silent_opened: dict[socket.socket, float] = {}
    kept_asked: dict[socket.socket, float] = {}
    try:
        for _ in range(150):  # each time taken before the event it stands for: the server's clock starts later
            opened = time.monotonic()
            sock = _connect(server.url)
            silent_opened[sock] = opened
            silent.append(sock)
        for _ in range(150):
            sock = _connect(server.url)
            kept.append(sock)
        for sock in kept:
            kept_asked[sock] = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        for sock in kept:
            status, headers, _ = _read_response(sock)
            assert status == 200 and headers.get("connection") != "close"

        _normal_requests(server.url)

        closed = _wait_closed(silent + kept)
        for sock in silent:
            assert closed[sock] - silent_opened[sock] >= HEADER_TIMEOUT * EARLY
            assert _read_all(sock) == b""  # nothing asked, nothing answered
        for sock in kept:
            assert closed[sock] - kept_asked[sock] >= KEEP_ALIVE * EARLY
            assert _read_all(sock) == b""
        _normal_requests(server.url)
    finally:
        for sock in silent + kept:
            sock.close()


def test_a_head_that_trickles_in_is_cut_after_the_header_timeout(server):
    """One byte every 0.4 s, on a new connection and on a kept-alive one: each gets 408 once its head is
    `HEADER_TIMEOUT` late, and normal requests answer meanwhile."""
    head = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    fresh_opened = time.monotonic()
    fresh = _connect(server.url)
    kept = _connect(server.url)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    assert _read_response(kept)[0] == 200
    kept_started = time.monotonic()
    kept.send(head[:1])
    trickles = [_Trickle(fresh, head, 0.4), _Trickle(kept, head[1:], 0.4)]
    try:
        for trickle in trickles:
            trickle.start()
        _normal_requests(server.url)
        closed = _wait_closed([fresh, kept])
        assert closed[fresh] - fresh_opened >= HEADER_TIMEOUT * EARLY
        assert closed[kept] - kept_started >= HEADER_TIMEOUT * EARLY
        for sock in (fresh, kept):
            status, headers, body = _parse_answer(_read_all(sock))
            assert (status, headers["connection"], body["error"]["code"]) == (408, "close", "request_timeout")
        _normal_requests(server.url)
    finally:
        for trickle in trickles:
            trickle.stop.set()
        fresh.close()
        kept.close()


def test_a_head_over_the_size_limit_gets_431(server):
    """A head over `max_header_bytes` (4096 here) is refused before it is complete, and also when it arrives
    whole in one piece."""
    partial = _connect(server.url)
    whole = _connect(server.url)
    try:
        partial.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 5000)  # no end: still coming
        whole.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n")
        for sock in _wait_closed([partial, whole]):
            status, _, body = _parse_answer(_read_all(sock))
            assert (status, body["error"]["code"]) == (431, "request_header_fields_too_large")
        ok = httpx.get(server.url + "/healthz", headers={"x-big": "a" * 3000}, timeout=DEADLINE)
        assert ok.status_code == 200
    finally:
        partial.close()
        whole.close()


def test_a_body_that_stalls_or_trickles_is_cut(server):
    """A body that stops after 10 bytes is cut after `BODY_IDLE_TIMEOUT`; one that trickles a byte every 0.05 s
    (never pausing long enough) after `BODY_TIMEOUT`. Both get 408 and normal requests answer meanwhile."""
    body = orjson.dumps(CHAT) + b" " * 1000
    stalled = _connect(server.url)
    trickling = _connect(server.url)
    stalled_sent = time.monotonic()
    stalled.sendall(_chat_head(len(body)) + body[:10])
    trickling_sent = time.monotonic()
    trickling.sendall(_chat_head(len(body)))
    trickle = _Trickle(trickling, body, 0.05)
    try:
        trickle.start()
        _normal_requests(server.url)
        closed = _wait_closed([stalled, trickling])
        assert closed[stalled] - stalled_sent >= BODY_IDLE_TIMEOUT * EARLY
        assert closed[trickling] - trickling_sent >= BODY_TIMEOUT * EARLY
        for sock in (stalled, trickling):
            status, headers, answer = _parse_answer(_read_all(sock))
            assert (status, headers["connection"], answer["error"]["code"]) == (408, "close", "request_timeout")
        _normal_requests(server.url)
    finally:
        trickle.stop.set()
        stalled.close()
        trickling.close()


def _in_flight(url: str, backend: str) -> float:
    text = httpx.get(url + "/metrics", timeout=DEADLINE).text
    found = re.search(rf'^modelworks_backend_in_flight{{backend="{backend}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_stops_reading_its_stream_is_reset(server):
    """A client asks for a 100,000-word stream and reads nothing: once the buffers are full the stream waits;
    after `WRITE_TIMEOUT` without progress the server resets the connection, the generation ends, the server's
    memory has not grown with the stream, and normal requests answer meanwhile."""
    pid = server.proc.pid
    _normal_requests(server.url)
    rss_before = _rss_kib(pid)
    body = orjson.dumps({"model": "long", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "max_tokens": 100_000})
    sock = _connect(server.url, rcvbuf=4096)
    try:
        asked = time.monotonic()
        sock.sendall(_chat_head(len(body)) + body)
        _wait_for(lambda: _in_flight(server.url, "long") == 1, what="the stream started")
        _normal_requests(server.url)
        closed = _wait_closed([sock], timeout=60)
        assert closed[sock] - asked >= WRITE_TIMEOUT * EARLY
        assert _state(sock) == TCP_CLOSE  # a reset: what was not sent is dropped
        _wait_for(lambda: _in_flight(server.url, "long") == 0, what="the generation ended")
        growth_mib = (_rss_kib(pid) - rss_before) / 1024
        assert growth_mib < 50, f"the server's RSS grew by {growth_mib:.1f} MiB"
        _normal_requests(server.url)
    finally:
        sock.close()


def test_connections_past_the_limit_are_refused(tmp_path):
    """With `max_connections: 20` and 20 idle connections open, a new one gets 503 and is closed; once some
    close, new connections are served again."""
    proc = start_modelworks(tmp_path, _config(max_connections=20, header_timeout_s=60), API_KEY)
    idle = []
    try:
        idle = [_connect(proc.url) for _ in range(20)]
        extra = _connect(proc.url)
        _wait_closed([extra])
        status, headers, body = _parse_answer(_read_all(extra))
        assert (status, headers["connection"], body["error"]["code"]) == (503, "close", "too_many_connections")
        extra.close()
        for sock in idle[:5]:
            sock.close()

        def served() -> bool:
            try:
                return httpx.get(proc.url + "/healthz", timeout=DEADLINE).status_code == 200
            except httpx.HTTPError:
                return False
        _wait_for(served, what="a connection served once others closed")
    finally:
        for sock in idle:
            sock.close()
        proc.stop()


def test_a_blank_line_split_across_two_reads_ends_the_head(server):
    """The head's last `\\n` arrives with a body larger than `max_header_bytes` (4096 here): the body is not
    counted as head (no 431)."""
    body = orjson.dumps(CHAT) + b" " * 10_000
    head = _chat_head(len(body))
    sock = _connect(server.url)
    try:
        sock.sendall(head[:-1])
        time.sleep(0.3)  # a lower bound: the two parts arrive as two reads (at least as far apart as this)
        sock.sendall(head[-1:] + body)
        status, _, answer = _read_response(sock)
        assert status == 200, answer[:300]
    finally:
        sock.close()
