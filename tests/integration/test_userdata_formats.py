"""cloud-init's other user-data formats through the CLI and the IMDS fake (issue 13 item 13)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tests.conftest import run_cli, web_tree

BASE_PLAY = "- hosts: all\n  gather_facts: false\n  tasks: [{ansible.builtin.debug: {msg: base}}]\n"


def _mime(*parts: tuple[str, dict[str, str]]) -> bytes:
    msg = MIMEMultipart()
    for text, headers in parts:
        part = MIMEText(text, "cloud-config")
        for name, value in headers.items():
            part[name] = value
        msg.attach(part)
    return msg.as_bytes(unixfrom=True)  # "From nobody ...": the mbox line some tools emit


def test_pullboot_section_split_over_parts_is_merged(make_repo: Any, make_imds: Any) -> None:
    repo = make_repo(web_tree(**{"playbooks/base.yml": BASE_PLAY}))
    make_imds(user_data=_mime(
        (f"#cloud-config\npullboot:\n  source: {repo.url}\n  roles: [base]\n"
         "  vars: {env: prod, tier: old}\n", {}),
        ("#cloud-config\npullboot:\n  roles: [web]\n  vars: {tier: front}\n",
         {"Merge-Type": "dict(recurse_array,no_replace)+list(append)"}),
    ))
    res = run_cli("plan", "--json")
    assert res.rc == 0, res.stderr
    plan = res.report
    assert plan["roles"] == [{"name": "base", "origin": "user-data"},
                             {"name": "web", "origin": "user-data"}]
    assert plan["playbooks"] == ["playbooks/base.yml", "playbooks/web.yml"]
    assert plan["vars"] == {"env": "user-data", "tier": "user-data"}


def test_jinja_template_gets_the_instance_data(make_repo: Any, make_imds: Any) -> None:
    repo = make_repo(web_tree())
    imds = make_imds(user_data=(
        "## template: jinja\n#cloud-config\npullboot:\n"
        f"  source: {repo.url}\n"
        "  role: {% if v1.region == 'eu-west-1' %}web{% else %}nope{% endif %}\n"
        "  run: {tags: ['{{ v1.region }}', '{{ local_hostname }}', '{{ v1.instance_id }}']}\n"
    ).encode())
    res = run_cli("plan", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == [{"name": "web", "origin": "user-data"}]
    assert res.report["settings"]["run.tags"] == {
        "value": ["eu-west-1", "ip-10-0-0-10", imds.instance_id], "origin": "user-data"}


class _Counting(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = b"#cloud-config\npullboot: {role: db}\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def include_server() -> Iterator[ThreadingHTTPServer]:
    """An http server on 127.0.0.1 that records requests; it stops itself after 60 s."""
    _Counting.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    server.timeout = 5
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Timer(60, server.shutdown)
    stop.daemon = True
    stop.start()
    try:
        yield server
    finally:
        stop.cancel()
        server.shutdown()
        server.server_close()


def test_include_is_never_fetched(make_repo: Any, make_imds: Any,
                                  include_server: ThreadingHTTPServer) -> None:
    port = include_server.server_address[1]
    url = f"http://127.0.0.1:{port}/pullboot.yaml?token=secret-in-url"
    repo = make_repo(web_tree())
    make_imds(tags={"pullboot:role": "web"}, user_data=f"#include\n{url}\n".encode())
    res = run_cli("plan", "--source", repo.url, "--json", timeout=60)
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == [{"name": "web", "origin": "imds-tag:pullboot:role"}]
    assert "pullboot does not fetch user-data includes" in res.stderr
    assert "secret-in-url" not in res.stderr + res.stdout
    assert _Counting.requests == []
