"""A threaded loopback HTTP server that can go down and come back (the emulators' base).

Used by the simulator's IMDS emulator and by the test fakes (``tests/fakes``).

Contract:

* Listens on 127.0.0.1 only, on an ephemeral port chosen by the kernel at ``start()``.
* ``down()`` makes the port refuse connections (the kernel answers SYN with RST, exactly like a
  host with nothing listening) and drops every open connection; ``up()`` listens again on the
  SAME port. The port stays bound while down (a bound socket that does not listen), so no other
  process can take it in between. This uses SO_REUSEPORT so the placeholder can be bound before
  the listener is closed: there is no window in which the port is free.
* ``start(listening=False)`` reserves the port but refuses connections until ``up()``.
* No polling: the accept loop blocks in a selector on the listener and a wake-up socketpair.
* ``pause(conn, seconds)`` is the one way for a handler to wait (fault delays): it returns early
  (True) when the connection is aborted by ``down()``/``stop()``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Final, Self

LOOPBACK: Final = "127.0.0.1"
_JOIN_TIMEOUT_S: Final = 5.0  # safety bound on teardown only, never used to synchronise

logger = logging.getLogger(__name__)

HandlerFactory = Callable[[Any, Any, "SwitchableServer"], socketserver.BaseRequestHandler]


def _bind_loopback(port: int) -> socket.socket:
    """Return a TCP socket bound to 127.0.0.1:port (0 = ephemeral), not yet listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # REUSEPORT lets the placeholder of down() be bound while the listener still exists.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    return sock


class SwitchableServer(socketserver.BaseServer):
    """Threaded HTTP-capable server on 127.0.0.1 whose port can refuse and accept again.

    ``handler`` is called as ``handler(conn, client_address, self)`` once per connection in its
    own daemon thread (a ``BaseHTTPRequestHandler`` subclass or a ``functools.partial`` of one).
    Subclassing ``BaseServer`` only gives handlers the type they expect for ``self.server``;
    its serve loop is not used.
    """

    def __init__(self, handler: HandlerFactory, *, name: str) -> None:
        super().__init__((LOOPBACK, 0), handler)
        self._handler = handler
        self.name = name
        self._switch = threading.RLock()  # serialises start/up/down/stop
        self._lock = threading.Lock()  # guards _conns and _workers
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._reserved: socket.socket | None = None
        self._wake: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Event] = {}
        self._workers: set[threading.Thread] = set()
        self._stopped = False

    @property
    def port(self) -> int:
        """The port, fixed for the server's life; RuntimeError before ``start()``."""
        if self._port is None:
            raise RuntimeError(f"{self.name}: start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def is_up(self) -> bool:
        """True while the port accepts connections."""
        return self._listener is not None

    def start(self, *, listening: bool = True) -> None:
        """Bind the ephemeral port; listen at once unless ``listening`` is False."""
        with self._switch:
            if self._port is not None:
                raise RuntimeError(f"{self.name}: already started")
            self._reserved = _bind_loopback(0)
            self._port = int(self._reserved.getsockname()[1])
            self.server_address = (LOOPBACK, self._port)
            if listening:
                self.up()

    def up(self) -> None:
        """Accept connections again on the same port (no-op if already up)."""
        with self._switch:
            if self._stopped or self._port is None:
                raise RuntimeError(f"{self.name}: not started or already stopped")
            if self._listener is not None:
                return
            listener = self._reserved or _bind_loopback(self._port)
            self._reserved = None
            listener.listen(64)
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
            self._listener, self._wake = listener, wake_w
            self._accept_thread = threading.Thread(
                target=self._accept_loop,
                args=(listener, wake_r),
                name=f"{self.name}-accept",
                daemon=True,
            )
            self._accept_thread.start()

    def down(self) -> None:
        """Refuse connections on the port and drop open ones (no-op if already down)."""
        with self._switch:
            if self._listener is None or self._port is None:
                return
            # Bind the placeholder first, so the port is never free.
            self._reserved = _bind_loopback(self._port)
            self._close_listener()
            self._abort_connections()

    def stop(self) -> None:
        """Close everything and release the port; idempotent."""
        with self._switch:
            if self._stopped:
                return
            self._stopped = True
            self._close_listener()
            if self._reserved is not None:
                self._reserved.close()
                self._reserved = None
            self._abort_connections()
            with self._lock:
                workers = list(self._workers)
            for worker in workers:
                worker.join(_JOIN_TIMEOUT_S)

    def pause(self, conn: socket.socket, seconds: float) -> bool:
        """Wait ``seconds`` on behalf of a handler; True if the connection was aborted meanwhile."""
        with self._lock:
            aborted = self._conns.get(conn)
        if aborted is None:
            return True
        return aborted.wait(seconds)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler exceptions at debug level: clients vanishing is routine for fakes."""
        logger.debug("%s: error serving %s", self.name, client_address, exc_info=True)

    def _close_listener(self) -> None:
        listener, wake, thread = self._listener, self._wake, self._accept_thread
        self._listener = self._wake = self._accept_thread = None
        if wake is not None:
            wake.send(b"x")
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
        if wake is not None:
            wake.close()
        if listener is not None:
            listener.close()

    def _abort_connections(self) -> None:
        with self._lock:
            conns = list(self._conns.items())
        for conn, aborted in conns:
            aborted.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self, listener: socket.socket, wake_r: socket.socket) -> None:
        with wake_r, selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wake_r:
                        return
                    try:
                        conn, address = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    conn.setblocking(True)
                    self._spawn(conn, address)

    def _spawn(self, conn: socket.socket, address: Any) -> None:
        worker = threading.Thread(
            target=self._serve_connection,
            args=(conn, address),
            name=f"{self.name}-conn",
            daemon=True,
        )
        with self._lock:
            self._conns[conn] = threading.Event()
            self._workers.add(worker)
        worker.start()

    def _serve_connection(self, conn: socket.socket, address: Any) -> None:
        try:
            self._handler(conn, address, self)
        except Exception:
            self.handle_error(conn, address)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                self._workers.discard(threading.current_thread())
            conn.close()


class FakeHTTPHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) handler base: body reading, plain responses, quiet logging."""

    protocol_version = "HTTP/1.1"
    server: SwitchableServer
    request: socket.socket

    def log_message(self, format: str, *args: Any) -> None:
        """Send http.server's access log to logging (debug) instead of stderr."""
        logger.debug("%s: " + format, self.server.name, *args)

    def read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked); b"" when there is none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self.rfile.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after the chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers, ignored
        return b"".join(parts)

    def send_plain(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a complete response with Content-Length (keeps the connection reusable)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class LoopbackService:
    """Lifecycle shared by the emulators and fakes built on :class:`SwitchableServer`.

    Subclasses set ``self._server`` and ``self._start_down`` in ``__init__``
    (which does no I/O); ``start()`` binds 127.0.0.1 on an ephemeral port.
    """

    _server: SwitchableServer
    _start_down: bool

    def start(self) -> None:
        """Bind 127.0.0.1:<ephemeral>; listen unless constructed with ``start_down=True``."""
        self._server.start(listening=not self._start_down)

    def stop(self) -> None:
        """Close the port and every connection; idempotent."""
        self._server.stop()

    def down(self) -> None:
        """Refuse connections (ECONNREFUSED) and drop open ones; the port stays reserved."""
        self._server.down()

    def up(self) -> None:
        """Accept connections again, on the same port."""
        self._server.up()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self._server.url

    @property
    def port(self) -> int:
        """The listening port (stable across down/up)."""
        return self._server.port

    @property
    def is_up(self) -> bool:
        """True while the port accepts connections."""
        return self._server.is_up
