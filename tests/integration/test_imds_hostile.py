"""IMDS is local and its answers are untrusted: no redirects, bounded answers, checked tokens.

Against the real IMDS fake over HTTP on 127.0.0.1 (``HostileIMDS`` adds the faults), through
the client and through the CLI: each ends in a clear error (exit 3) and a report, never a
traceback, and the token never leaves the configured endpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from pullboot.errors import IdentityError, ImdsUnavailable
from pullboot.imds import MAX_ANSWER_BYTES, ImdsClient, ImdsOptions
from tests.conftest import run_cli
from tests.fakes.imds import FakeIMDS, HostileIMDS


def _client(url: str, **opts: float) -> ImdsClient:
    return ImdsClient(ImdsOptions(endpoint=url, **opts))  # type: ignore[arg-type]


def test_redirect_is_an_error_and_the_token_stays_home() -> None:
    with FakeIMDS() as elsewhere, HostileIMDS(redirect_to=elsewhere.url) as imds:
        with pytest.raises(ImdsUnavailable, match="redirect"):
            _client(imds.url).get("/latest/meta-data/instance-id")
        assert imds.tokens_issued == 1
        assert elsewhere.requests == [], "the redirect was followed"


@pytest.mark.parametrize("token", [b"AQAE\r\nX-Evil: 1", b"AQAE\xffAQ", b"x" * 5000, b"   "],
                         ids=["crlf", "0xff", "too-long", "blank"])
def test_a_bad_token_is_a_clear_identity_error(token: bytes) -> None:
    with HostileIMDS(token=token) as imds:
        with pytest.raises(IdentityError, match="invalid session token"):
            _client(imds.url).get("/latest/meta-data/instance-id")
        assert not any(r.had_token for r in imds.requests), "the bad token was sent back"


def test_an_oversized_answer_is_refused() -> None:
    with (HostileIMDS(oversize=b"x" * (MAX_ANSWER_BYTES + 10)) as imds,
          pytest.raises(ImdsUnavailable, match="larger than")):
        _client(imds.url).get("/latest/user-data")


def test_a_dripping_imds_is_bounded_per_request_and_in_total() -> None:
    with HostileIMDS(drip_bps=1, drip_limit_s=60) as imds:
        started = time.monotonic()
        with pytest.raises(ImdsUnavailable, match="did not answer"):
            _client(imds.url, timeout=1, budget=3).get("/latest/meta-data/instance-id")
        took = time.monotonic() - started
    assert took < 3 * 3 + 3, f"took {took:.1f}s"


@pytest.mark.parametrize("token", [b"AQAE\r\nX-Evil: 1", b"AQAE\xffAQ"], ids=["crlf", "0xff"])
def test_a_bad_token_through_the_cli_is_exit_3_with_a_report(
        token: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({"imds": {"budget": 5}}))
    with HostileIMDS(token=token) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
        result = run_cli("run", "--source", str(tmp_path), "--role", "web", "--json")
    assert result.rc == 3, result.stderr
    assert "invalid session token" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.report["status"] == "error"


def test_a_redirect_through_the_cli_is_exit_3(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeIMDS() as elsewhere, HostileIMDS(redirect_to=elsewhere.url) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
        result = run_cli("run", "--source", str(tmp_path), "--role", "web", "--json")
        assert elsewhere.requests == []
    assert result.rc == 3, result.stderr
    assert "redirect" in result.stderr and "Traceback" not in result.stderr
