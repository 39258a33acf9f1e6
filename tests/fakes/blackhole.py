"""Blackhole: a TCP server on 127.0.0.1 that accepts connections and never answers.

A server that is "up" but hangs (a wedged git daemon, a stuck load balancer) is the fault that
per-read timeouts miss. Each accepted connection is held open, read and never written to. The
server is bounded in time: after ``lifetime_s`` (default 120 s) it closes everything and stops
by itself, so a test that forgets it cannot hang the suite. ``connected`` is set at the first
accepted connection, for tests to wait on (with a timeout) instead of sleeping.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType
from typing import Final, Self

from pullboot.sim._server import LOOPBACK

_READ_SIZE: Final = 65536


class Blackhole:
    """Accept-and-never-answer TCP server; the constructor does no I/O."""

    def __init__(self, *, lifetime_s: float = 120.0) -> None:
        self.lifetime_s = lifetime_s
        self.connected = threading.Event()
        self.accepted = 0
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("blackhole: start() first")
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        listener = socket.create_server((LOOPBACK, 0))
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="blackhole", daemon=True)
        self._thread.start()
        # Stop by itself: the safety bound, not a synchronisation.
        timer = threading.Timer(self.lifetime_s, self.stop)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _serve(self) -> None:
        assert self._listener is not None
        conns: list[socket.socket] = []
        with self._listener, selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    if key.fileobj is self._listener:
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = self._listener.accept()
                            conn.setblocking(False)
                            conns.append(conn)
                            sel.register(conn, selectors.EVENT_READ)
                            self.accepted += 1
                            self.connected.set()
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    try:
                        data = conn.recv(_READ_SIZE)
                    except OSError:
                        data = b""
                    if not data:  # the client gave up
                        sel.unregister(conn)
                        conn.close()
                        conns.remove(conn)
        for conn in conns:
            conn.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
