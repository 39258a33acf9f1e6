"""Plumbing shared by the HTTP fakes.

The loopback server itself (``SwitchableServer``, ``FakeHTTPHandler``) is product code shared
with the instance simulator and lives in :mod:`pullboot.sim._server`; it is re-exported here.
This module adds what only the relaying fakes need (FaultProxy, FakeAwsQuery): ``relay``.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from typing import Final

from pullboot.sim._server import LOOPBACK, FakeHTTPHandler, HandlerFactory, SwitchableServer

__all__ = ["HOP_BY_HOP", "LOOPBACK", "FakeHTTPHandler", "HandlerFactory", "Relayed",
           "SwitchableServer", "parse_upstream", "relay"]

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "expect"}
)


@dataclass(frozen=True)
class Relayed:
    """An upstream response read in full; ``headers`` exclude hop-by-hop ones."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def parse_upstream(url: str) -> urllib.parse.SplitResult:
    """Split an ``http://host:port`` upstream URL; ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"upstream must look like http://HOST:PORT, got {url!r}")
    return parts


def relay(upstream: urllib.parse.SplitResult, method: str, target: str,
          headers: Message, body: bytes, *, timeout_s: float = 60.0) -> Relayed:
    """Send one request upstream on a fresh ``Connection: close`` connection; read it all.

    The client's Host header is kept (SigV4 signs it); Expect and framing headers are dropped
    and the body goes with its real Content-Length. Raises OSError or http.client.HTTPException
    when the upstream cannot be reached or answers garbage.
    """
    conn = http.client.HTTPConnection(upstream.hostname or LOOPBACK, upstream.port,
                                      timeout=timeout_s)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                conn.putheader(name, value)
        if "Host" not in headers:
            conn.putheader("Host", upstream.netloc)
        if body or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body or None)
        response = conn.getresponse()
        data = response.read()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return Relayed(response.status, response.reason, kept, data)
    finally:
        conn.close()
