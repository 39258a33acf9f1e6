"""The IMDSv2 client against the IMDS fake over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pullboot.errors import ImdsUnavailable
from pullboot.identity import read_identity
from pullboot.imds import ImdsClient, ImdsOptions


class FakeClock:
    """Virtual time for the client's budget: sleeping advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: list[Any] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


def client(imds: Any, clock: FakeClock | None = None, **opts: Any) -> ImdsClient:
    clock = clock or FakeClock()
    return ImdsClient(ImdsOptions(endpoint=imds.url, **opts), sleep=clock.sleep, clock=clock)


def test_token_is_fetched_once_and_reused(make_imds: Any) -> None:
    imds = make_imds(tags={"a": "1", "b": "2"}, user_data=b"x")
    identity = read_identity(client(imds), read_tags=True)
    assert identity.instance_id == imds.instance_id
    assert identity.tags == {"a": "1", "b": "2"}
    assert identity.user_data == b"x"
    assert imds.tokens_issued == 1
    assert all(r.had_token for r in imds.requests if r.method == "GET")


def test_expired_token_is_refreshed(make_imds: Any) -> None:
    imds = make_imds()
    c = client(imds)
    assert c.get_text("/latest/meta-data/instance-id") == imds.instance_id
    imds.expire_tokens()
    assert c.get_text("/latest/meta-data/instance-id") == imds.instance_id
    assert imds.tokens_issued == 2


def test_404_means_absent_not_error(make_imds: Any) -> None:
    imds = make_imds(tags=None, user_data=None)
    identity = read_identity(client(imds), read_tags=True)
    assert identity.user_data is None
    assert identity.tags == {}
    assert identity.tags_from is None
    assert "not enabled" in (identity.tags_note or "")


def test_unreachable_at_boot_then_up(make_imds: Any) -> None:
    """IMDS refuses connections for the first 20 s of (virtual) boot time, then answers."""
    imds = make_imds(start_down=True)
    clock = FakeClock()
    came_up = threading.Event()

    def bring_up(now: float) -> None:
        if now >= 20 and not came_up.is_set():
            imds.up()
            came_up.set()

    clock.on_sleep.append(bring_up)
    c = client(imds, clock, budget=120)
    assert c.get_text("/latest/meta-data/instance-id") == imds.instance_id
    assert came_up.is_set()
    assert len(clock.sleeps) >= 4, "expected several backoff waits"
    assert max(clock.sleeps) <= 5.0, "backoff is capped"


def test_gives_up_after_the_budget(make_imds: Any) -> None:
    imds = make_imds(start_down=True)
    clock = FakeClock()
    with pytest.raises(ImdsUnavailable) as info:
        client(imds, clock, budget=15).get("/latest/meta-data/instance-id")
    assert clock.now >= 15
    assert "did not answer" in info.value.message
    assert "AWS_EC2_METADATA_DISABLED" in (info.value.hint or "")


def test_5xx_are_retried(make_imds: Any) -> None:
    imds = make_imds()
    imds.fail_next(3, 503)
    assert client(imds).get_text("/latest/meta-data/instance-id") == imds.instance_id
    assert imds.status_counts[503] == 3


def test_slow_answers_within_timeout(make_imds: Any) -> None:
    imds = make_imds()
    imds.delay_s = 0.3
    assert client(imds, timeout=2).get_text("/latest/meta-data/instance-id") == imds.instance_id


def test_imdsv1_only_when_allowed(make_imds: Any) -> None:
    imds = make_imds(allow_imdsv1=True)
    imds.fail_next(1, 403)  # the token PUT is refused, as with IMDSv1-only endpoints
    c = client(imds, allow_v1=True)
    assert c.get_text("/latest/meta-data/instance-id") == imds.instance_id
    assert any(not r.had_token for r in imds.requests if r.method == "GET")

    strict = make_imds()
    strict.fail_next(1, 403)
    with pytest.raises(ImdsUnavailable) as info:
        client(strict).get("/latest/meta-data/instance-id")
    assert "allow_v1" in (info.value.hint or "")


def test_malformed_identity_document_falls_back_to_meta_data(make_imds: Any) -> None:
    imds = make_imds()
    imds.identity_document = b"{not json"
    identity = read_identity(client(imds), read_tags=False)
    assert identity.instance_id == imds.instance_id
    assert identity.region == imds.region
    assert identity.instance_type == imds.instance_type
    assert identity.account_id is None  # only the document has it
