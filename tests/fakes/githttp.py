"""Git over smart HTTP on 127.0.0.1, through the real ``git http-backend``, with token auth.

``GitHttpServer(root, token=...)`` serves every repository under ``root`` at
``http://127.0.0.1:PORT/<name>``. With a token, a request must carry
``Authorization: Basic base64(<any user>:<token>)`` or gets 401, which is how
private HTTPS remotes behave. Records the Authorization headers it saw.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class GitHttpServer:
    """Start with ``with GitHttpServer(root, token="t") as srv: srv.url``."""

    def __init__(self, root: Path, *, token: str | None = None) -> None:
        self.root = root
        self.token = token
        self.auth_headers: list[str] = []
        self.unauthorized = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GitHttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            _, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secret == self.token


class _Handler(BaseHTTPRequestHandler):
    server_owner: GitHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        owner = self.server_owner
        header = self.headers.get("Authorization")
        if header:
            owner.auth_headers.append(header)
        if not owner.authorised(header):
            owner.unauthorized += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(owner.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "PATH": "/usr/bin:/bin",
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
