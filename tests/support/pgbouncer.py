"""Debian's PgBouncer on loopback in front of the real PostgreSQL, in transaction mode (as production runs it)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.databases import PG_ADMIN_DSN, require_services
from support.servers import free_port


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class PgBouncer:
    def __init__(self, pool_size: int = 2, port: int | None = None) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        if binary is None:
            message = "pgbouncer is not installed (make test installs it with apt-get)"
            if require_services():
                pytest.fail(message)
            pytest.skip(message)
        self.port = port or free_port()
        pg = urlsplit(PG_ADMIN_DSN)
        # PgBouncer refuses to run as root: as root it switches to postgres, which must read its files
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.dir.chmod(0o755)
        users = self.dir / "users.txt"
        users.write_text(f'"{pg.username or "postgres"}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={pg.hostname or '127.0.0.1'} port={pg.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
            "server_reset_query =\n"
            # from 1.21 PgBouncer can track prepared statements itself: off, to test the gateway's own setting
            + ("max_prepared_statements = 0\n" if _version(binary) >= (1, 21) else ""))
        for path in (users, ini):
            path.chmod(0o644)
        args = [binary] + (["-u", "postgres"] if os.geteuid() == 0 else []) + [str(ini)]
        self.log_path = self.dir / "pgbouncer.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start:\n" + self.output()) from None
                time.sleep(0.1)

    def url(self, direct_url: str) -> str:
        """`direct_url` (a database on the real PostgreSQL), through this PgBouncer."""
        parts = urlsplit(direct_url)
        host = parts.netloc.rpartition("@")
        return parts._replace(netloc=f"{host[0]}{host[1]}127.0.0.1:{self.port}").geturl()

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
