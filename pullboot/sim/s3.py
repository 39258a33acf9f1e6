"""S3 for the simulator: moto's server on 127.0.0.1, and publishing a bundle into it.

moto is an optional dependency (the ``sim`` extra); it is imported only when a server starts,
so a simulated boot from Git or a directory never needs it. The tests use :class:`MotoServer`
too (``tests/fakes/moto.py`` re-exports it).

MotoServer: moto 5.x's ThreadedMotoServer on 127.0.0.1 with an ephemeral port.

Facts this relies on (checked against moto 5.2.5 on this machine):

* ``ThreadedMotoServer(ip_address="127.0.0.1", port=0)`` works: werkzeug binds port 0 and
  ``get_host_and_port()`` returns the real port once ``start()`` has returned (start() blocks
  until the server object exists). Its defaults are 0.0.0.0:5000, hence explicit arguments.
* If werkzeug fails to bind, the exception dies in moto's thread and ``start()`` waits forever;
  with 127.0.0.1:0 the bind cannot fail for "address in use", so that path is not guarded.
* ``stop()`` shuts werkzeug's loop down and werkzeug closes the listening socket.
* ``POST /moto-api/reset`` answers ``{"status": "ok"}`` and empties every backend.
* moto picks the service from the SigV4 credential scope, not the Host header, so requests
  relayed by FaultProxy or FakeAwsQuery (Host = the relay) still land in the right backend.
* The first EC2 call costs about 3 s (backend load); S3 is fast.
"""

from __future__ import annotations

import json
import urllib.request
from types import TracebackType
from typing import Any, Final

from pullboot.sim import SIM_EXTRA_HINT, SimError
from pullboot.sim._server import LOOPBACK

DUMMY_ACCESS_KEY: Final = "testing"
# moto accepts any credentials; botocore only needs some to sign with.
DUMMY_SECRET_KEY: Final = "testing"  # noqa: S105 - a dummy, by design


class MotoServer:
    """A moto server on 127.0.0.1:<ephemeral>; the constructor does no I/O."""

    def __init__(self, *, region: str = "eu-west-1") -> None:
        self.region = region
        self._server: Any = None
        self._port: int | None = None

    def start(self) -> None:
        """Start the server thread; returns once the port is bound and serving."""
        if self._server is not None:
            raise RuntimeError("moto server already started")
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise SimError(f"an S3 source needs moto's server, which is not installed ({exc})",
                           hint=SIM_EXTRA_HINT) from exc
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        if host != LOOPBACK or port == 0:
            server.stop()
            raise RuntimeError(f"moto bound {host}:{port}, expected {LOOPBACK}:<ephemeral>")
        self._server, self._port = server, port

    def stop(self) -> None:
        """Stop the server and close its socket; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port moto listens on; RuntimeError before ``start()``."""
        if self._port is None:
            raise RuntimeError("start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        """Empty every moto backend (``POST /moto-api/reset``); RuntimeError if moto refuses."""
        # self.url is always http://127.0.0.1:PORT.
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status = json.loads(response.read() or b"{}").get("status")
        if status != "ok":
            raise RuntimeError(f"moto reset answered {status!r}")

    def env(self) -> dict[str, str]:
        """Env vars that send every boto3 client here with dummy credentials and the region."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
        }
