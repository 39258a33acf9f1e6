"""FaultProxy: an HTTP-aware proxy on 127.0.0.1 in front of one upstream, with programmable faults.

Point a client at ``.url`` instead of the upstream (for S3: ``AWS_ENDPOINT_URL_S3``). Each client
request is read in full, then relayed on a fresh upstream connection with ``Connection: close``;
the client side keeps HTTP/1.1 keep-alive (botocore's pool reuses it) except after a reset or
a truncation, which end the connection as a real network fault would. ``Expect: 100-continue``
(botocore sends it on S3 PutObject) is answered by the proxy itself and not relayed.

Addressing style: for ANY custom endpoint URL (``endpoint_url=`` or ``AWS_ENDPOINT_URL_S3``)
botocore forces path-style S3 requests unless ``Config(s3={"addressing_style": "virtual"})``
is set (botocore/args.py sets the ruleset's ForcePathStyle for a client endpoint that is not an
accelerate URL). So ``http://127.0.0.1:PORT`` and ``http://localhost:PORT`` both give
``/bucket/key`` requests here, and moto resolves them; no Config is needed.

Faults are queued in the order they are armed and each request consumes one:

* ``error_next(n, status, code, message)`` / ``slow_down(n)``: answer with an S3-style XML error
  (``<Error><Code>SlowDown</Code>...``) without contacting the upstream.
* ``reset_next(n, after_upstream=False)``: abort the client connection with RST (SO_LINGER 0),
  before relaying (the upstream never sees the request) or after it (the upstream applied it).
* ``garbage_next(n)``: answer ``200 OK`` with an HTML page (a captive portal, a wrong endpoint)
  without contacting the upstream: botocore cannot parse it.
* ``truncate_next(n, after_bytes=k)``: send the upstream's status and headers (full
  Content-Length) but only the first k body bytes, then close.

Persistent: ``throttle(bytes_per_second)`` paces every response body (None = full speed), to
make a download last long enough to kill its process midway. ``stall(prefix, seconds)`` holds
every request whose path starts with ``prefix`` that long before relaying it (stopping the
proxy ends the wait). ``down()``/``up()`` as in FakeIMDS.
"""

from __future__ import annotations

import collections
import functools
import http.client
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple
from xml.sax.saxutils import escape

from pullboot.sim._server import LoopbackService
from tests.fakes._server import FakeHTTPHandler, Relayed, SwitchableServer, parse_upstream, relay

S3_ENDPOINT_ENV: Final = "AWS_ENDPOINT_URL_S3"
_THROTTLE_SLICES_PER_S: Final = 20
_NO_BODY_STATUSES: Final = frozenset({204, 304})

FaultKind = Literal["pass", "error", "reset", "reset_after", "truncate", "garbage"]
GARBAGE_PAGE: Final = b"<html><body><h1>Welcome to the hotel Wi-Fi</h1><p>Log in</body></html>"


class ProxyRequest(NamedTuple):
    """One client request: method and raw request target (path plus query, as sent)."""

    method: str
    path: str


@dataclass(frozen=True)
class _Fault:
    kind: FaultKind
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    after_bytes: int = 0


def s3_error_xml(code: str, message: str) -> bytes:
    """An S3 REST-XML error body, as botocore's rest-xml parser expects it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId>"
        f"<HostId>{uuid.uuid4().hex}</HostId></Error>"
    ).encode()


class FaultProxy(LoopbackService):
    """Fault-injecting HTTP proxy; see the module docstring. The constructor does no I/O."""

    def __init__(self, upstream: str, *, start_down: bool = False) -> None:
        self.upstream = upstream
        self._upstream = parse_upstream(upstream)
        self._start_down = start_down
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._rate: float | None = None
        self._stalls: dict[str, float] = {}
        self._requests: list[ProxyRequest] = []
        self._applied: list[tuple[ProxyRequest, FaultKind]] = []
        self._server = SwitchableServer(
            functools.partial(_ProxyHandler, proxy=self), name="fault-proxy"
        )

    # -- faults ------------------------------------------------------------------------------

    def error_next(self, n: int = 1, *, status: int = 503, code: str = "SlowDown",
                   message: str = "Please reduce your request rate.") -> None:
        """Queue ``n`` S3-style XML error answers (default: 503 SlowDown)."""
        self._queue(n, _Fault("error", status=status, code=code, message=message))

    def slow_down(self, n: int = 1) -> None:
        """Queue ``n`` answers of ``503 SlowDown``."""
        self.error_next(n)

    def garbage_next(self, n: int = 1) -> None:
        """Queue ``n`` answers of ``200 OK`` with an HTML page instead of an AWS response."""
        self._queue(n, _Fault("garbage", status=200))

    def reset_next(self, n: int = 1, *, after_upstream: bool = False) -> None:
        """Queue ``n`` connection resets (RST), before or after relaying the request."""
        self._queue(n, _Fault("reset_after" if after_upstream else "reset"))

    def truncate_next(self, n: int = 1, *, after_bytes: int = 0) -> None:
        """Queue ``n`` responses cut after ``after_bytes`` body bytes (headers say full size)."""
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._queue(n, _Fault("truncate", after_bytes=after_bytes))

    def throttle(self, bytes_per_second: float | None) -> None:
        """Pace every response body at this rate from now on; None removes the limit."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0 or None")
        with self._lock:
            self._rate = bytes_per_second

    def stall(self, path_prefix: str, seconds: float | None) -> None:
        """Hold requests whose path starts with ``path_prefix`` for ``seconds`` (None: stop)."""
        with self._lock:
            if seconds is None:
                self._stalls.pop(path_prefix, None)
            else:
                self._stalls[path_prefix] = seconds

    def clear_faults(self) -> None:
        """Drop queued faults, stalls and the throttle."""
        with self._lock:
            self._faults.clear()
            self._stalls.clear()
            self._rate = None

    def _stall_for(self, path: str) -> float:
        with self._lock:
            return max((s for p, s in self._stalls.items() if path.startswith(p)), default=0.0)

    @property
    def pending_faults(self) -> int:
        """How many queued faults are still to be consumed."""
        with self._lock:
            return len(self._faults)

    # -- observation -------------------------------------------------------------------------

    @property
    def requests(self) -> list[ProxyRequest]:
        """Snapshot of every client request, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def applied(self) -> list[tuple[ProxyRequest, FaultKind]]:
        """Snapshot: each request with the fault applied to it ("pass" when none)."""
        with self._lock:
            return list(self._applied)

    def clear_log(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self._requests.clear()
            self._applied.clear()

    # -- internals ---------------------------------------------------------------------------

    def _queue(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._faults.extend([fault] * n)

    def _take(self, request: ProxyRequest) -> tuple[_Fault | None, float | None]:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            self._requests.append(request)
            self._applied.append((request, fault.kind if fault else "pass"))
            return fault, self._rate

    def _relay(self, handler: _ProxyHandler, body: bytes) -> Relayed:
        try:
            return relay(self._upstream, handler.command, handler.path, handler.headers, body)
        except (OSError, http.client.HTTPException) as exc:
            return Relayed(502, "Bad Gateway", [("Content-Type", "text/plain")],
                           f"fault-proxy: upstream {self.upstream}: {exc}".encode())


class _ProxyHandler(FakeHTTPHandler):
    """Per-connection handler; faults and logs live in the FaultProxy."""

    def __init__(self, request: socket.socket, client_address: Any,
                 server: SwitchableServer, *, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(request, client_address, server)

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        body = self.read_body()
        fault, rate = self.proxy._take(ProxyRequest(self.command, self.path))
        stall = self.proxy._stall_for(self.path)
        if stall and self.server.pause(self.request, stall):
            self.close_connection = True
            return
        if fault is not None and fault.kind == "error":
            self.send_plain(fault.status, s3_error_xml(fault.code, fault.message),
                            content_type="application/xml")
            return
        if fault is not None and fault.kind == "garbage":
            self.send_plain(200, GARBAGE_PAGE, content_type="text/html")
            return
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        answer = self.proxy._relay(self, body)
        if fault is not None and fault.kind == "reset_after":
            self._reset()
            return
        bodiless = self.command == "HEAD" or answer.status in _NO_BODY_STATUSES
        payload = b"" if bodiless else answer.body
        self.send_response_only(answer.status, answer.reason)
        for name, value in answer.headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        if bodiless:
            length = answer.header("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault is not None and fault.kind == "truncate":
            payload = payload[: fault.after_bytes]
            self.close_connection = True
        if not self._write_paced(payload, rate):
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection: with SO_LINGER 0 the close sends RST, not FIN."""
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _write_paced(self, data: bytes, rate: float | None) -> bool:
        """Write ``data`` at ``rate`` bytes/s (None = at once); False if aborted meanwhile."""
        if rate is None:
            self.wfile.write(data)
            return True
        slice_size = max(1, int(rate / _THROTTLE_SLICES_PER_S))
        started, sent = time.monotonic(), 0
        while sent < len(data):
            piece = data[sent : sent + slice_size]
            sent += len(piece)
            # Like a slow link, a slice is delivered once it has had time to cross it: the
            # whole body takes at least len(data)/rate. Pacing is the fault, not a sync.
            wait = started + sent / rate - time.monotonic()
            if wait > 0 and self.server.pause(self.request, wait):
                return False
            self.wfile.write(piece)
        return True
