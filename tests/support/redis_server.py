"""A real, throw-away redis-server on 127.0.0.1 for tests (no persistence, free port).

with RedisServer() as server:
    server.url            # redis://127.0.0.1:PORT/0
    server.stop()         # an outage: connections are refused
    server.start()        # back on the same port (empty: nothing is persisted)
    server.freeze()       # a hang: connections open, nothing answers (SIGSTOP)
    server.thaw()         # answers again, data intact (SIGCONT)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from support.net import free_port

NOT_FOUND = "redis-server not found: install Debian package redis-server (./dev test installs it)"


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(NOT_FOUND)
        self.binary = binary
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="nexus-redis-")
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        log = Path(self._dir.name) / "redis.log"
        args += ["--appendonly", "no", "--dir", self._dir.name, "--daemonize", "no", "--logfile", str(log)]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ping():
            if self._proc.poll() is not None:
                self._reap()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RedisServerError(f"redis-server exited on port {self.port}: {tail.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._frozen:
            self.thaw()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._reap()

    def freeze(self) -> None:
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._proc is not None and self._frozen:
            self._proc.send_signal(signal.SIGCONT)
            self._frozen = False

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command (RESP); return the raw reply (tests: FLUSHALL, DBSIZE, ...)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload)
            return s.recv(65536)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["NOT_FOUND", "RedisServer", "RedisServerError"]
