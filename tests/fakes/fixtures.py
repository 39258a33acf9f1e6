"""pytest plugin wiring the fakes into a test's environment.

Load it with ``pytest_plugins = ["tests.fakes.fixtures"]`` (root conftest). Every fixture sets
its env vars through ``monkeypatch`` so they are undone after the test, and so they override a
conftest autouse fixture that disables IMDS and removes ``AWS_ENDPOINT_URL*``.

* ``imds`` - a started FakeIMDS (defaults); ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` = its URL and
  ``AWS_EC2_METADATA_DISABLED`` removed. ``make_imds(**kwargs)`` does the same for a FakeIMDS
  built with the given constructor arguments (the env points at the last one made).
* ``moto_server`` - session-scoped MotoServer (state is NOT reset between tests by itself).
* ``aws`` - resets moto, points every boto3 client at it (``AWS_ENDPOINT_URL``, dummy
  credentials, ``AWS_DEFAULT_REGION``; any ``AWS_ENDPOINT_URL_<SERVICE>``,
  ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``, ``AWS_PROFILE`` and ``AWS_SESSION_TOKEN`` removed) and
  yields an AwsEnv whose ``client(service)`` always talks to moto directly.
* ``aws_query`` - a FakeAwsQuery in front of that moto (needs ``aws``): Auto Scaling and
  CloudFormation clients built from the environment reach it; the readiness actions are
  recorded there and every other action of those services is relayed to moto.
* ``fault_proxy`` - factory ``fault_proxy(upstream=None, *, env=None)``: a started FaultProxy
  in front of ``upstream`` (default: the reset moto of ``aws``); ``env`` names an env var to
  point at the proxy, typically ``S3_ENDPOINT_ENV``. All are stopped after the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import boto3  # type: ignore[import-untyped, unused-ignore]  # typed by boto3-stubs
import pytest

from tests.fakes.awsquery import FakeAwsQuery
from tests.fakes.faultproxy import FaultProxy
from tests.fakes.gitdaemon import GitDaemon
from tests.fakes.imds import FakeIMDS
from tests.fakes.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, MotoServer

IMDS_ENDPOINT_ENV: Final = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
IMDS_DISABLED_ENV: Final = "AWS_EC2_METADATA_DISABLED"
DEFAULT_REGION: Final = "eu-west-1"
# Would otherwise override or bypass AWS_ENDPOINT_URL and the dummy credentials.
_AWS_ENV_TO_CLEAR: Final = ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE",
                            "AWS_SESSION_TOKEN")

_boto3_client: Callable[..., Any] = boto3.client


class ImdsFactory(Protocol):
    """``make_imds(**FakeIMDS kwargs) -> started FakeIMDS`` (env points at it)."""

    def __call__(self, **kwargs: Any) -> FakeIMDS: ...


class FaultProxyFactory(Protocol):
    """``fault_proxy(upstream=None, *, env=None) -> started FaultProxy``."""

    def __call__(self, upstream: str | None = None, *, env: str | None = None) -> FaultProxy: ...


@dataclass(frozen=True)
class AwsEnv:
    """What the ``aws`` fixture yields: the moto URL and a client maker bound to it."""

    url: str
    region: str

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client talking to moto directly (ignores endpoint env vars, e.g. a proxy)."""
        params: dict[str, Any] = {
            "endpoint_url": self.url,
            "region_name": self.region,
            "aws_access_key_id": DUMMY_ACCESS_KEY,
            "aws_secret_access_key": DUMMY_SECRET_KEY,
        }
        params.update(kwargs)
        return _boto3_client(service, **params)


@pytest.fixture
def make_imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[ImdsFactory]:
    """Factory of started FakeIMDS; each call repoints AWS_EC2_METADATA_SERVICE_ENDPOINT."""
    made: list[FakeIMDS] = []

    def make(**kwargs: Any) -> FakeIMDS:
        fake = FakeIMDS(**kwargs)
        fake.start()
        made.append(fake)
        monkeypatch.setenv(IMDS_ENDPOINT_ENV, fake.url)
        monkeypatch.delenv(IMDS_DISABLED_ENV, raising=False)
        return fake

    yield make
    for fake in reversed(made):
        fake.stop()


@pytest.fixture
def imds(make_imds: ImdsFactory) -> FakeIMDS:
    """A started FakeIMDS with default identity, tags disabled and no user data."""
    return make_imds()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session; use ``aws`` for a reset, wired environment."""
    with MotoServer(region=DEFAULT_REGION) as server:
        yield server


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> AwsEnv:
    """Reset moto and point boto3 (env vars) at it; see the module docstring."""
    moto_server.reset()
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    return AwsEnv(url=moto_server.url, region=moto_server.region)


@pytest.fixture
def aws_query(aws: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAwsQuery]:
    """FakeAwsQuery relaying to moto, with both service endpoint env vars pointing at it."""
    with FakeAwsQuery(upstream=aws.url) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


@pytest.fixture
def fault_proxy(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxyFactory]:
    """Factory of started FaultProxy instances, all stopped after the test."""
    made: list[FaultProxy] = []

    def make(upstream: str | None = None, *, env: str | None = None) -> FaultProxy:
        if upstream is None:
            aws_env: AwsEnv = request.getfixturevalue("aws")
            upstream = aws_env.url
        proxy = FaultProxy(upstream)
        proxy.start()
        made.append(proxy)
        if env is not None:
            monkeypatch.setenv(env, proxy.url)
        return proxy

    yield make
    for proxy in reversed(made):
        proxy.stop()


@pytest.fixture
def git_daemon_at() -> Iterator[Callable[[Path], GitDaemon]]:
    """Factory of started ``git daemon`` servers on 127.0.0.1, each serving a directory;
    all stopped after the test."""
    started: list[GitDaemon] = []

    def make(root: Path) -> GitDaemon:
        root.mkdir(parents=True, exist_ok=True)
        daemon = GitDaemon(root)
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
