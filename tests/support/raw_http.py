"""Raw HTTP on a socket, for tests that must control the connection itself (disconnects, queued requests)."""

from __future__ import annotations

import json
import socket

SOCKET_TIMEOUT_S = 60.0  # every connect, send and receive on these sockets: a stuck server fails the test


def send_request(base_url: str, api_key: str, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """Open a connection, send one POST, and return the socket without reading the answer. Its operations time
    out after SOCKET_TIMEOUT_S (socket.timeout) rather than hang."""
    payload = json.dumps(body).encode()
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)  # fail, never hang
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"authorization: Bearer {api_key}\r\ncontent-length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def open_stream(base_url: str, api_key: str, body: dict, events: int = 2) -> socket.socket:
    """Send a streaming request and read until `events` SSE events have arrived; the stream stays open."""
    sock = send_request(base_url, api_key, {**body, "stream": True})
    received = b""
    while received.count(b"data:") < events:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the stream early: {received[:300]!r}"
        received += chunk
    assert b" 200 " in received.split(b"\r\n", 1)[0], received[:300]
    return sock
