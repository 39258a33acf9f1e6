"""Playbook and inventory settings are paths inside the tree (or host lists), never more."""

from __future__ import annotations

import pytest

from pullboot import config
from pullboot.errors import ConfigError
from pullboot.runner import default_limit


@pytest.mark.parametrize("value", ["site.yml", "deploy/app.yml", "inventory", "a b.yml"])
def test_tree_paths_are_accepted(value: str) -> None:
    assert config.coerce("playbooks", [value], where="t") == [value]
    assert config.coerce("run.inventory", [value], where="t") == [value]


@pytest.mark.parametrize(("value", "why"), [
    ("../x.yml", "holds '..'"), ("a/../../x", "holds '..'"), ("/etc/x", "not relative"),
    ("~root/x", "not relative"), ("-x.yml", "starts with '-'"), ("a\nb", "control character"),
    ("", "1 to 1024"), ("x" * 1025, "1 to 1024"), ("..\\x", "holds '..'"),
])
def test_paths_that_could_leave_the_tree_or_act_as_options_are_refused(value: str,
                                                                      why: str) -> None:
    for key in ("playbooks", "run.inventory"):
        with pytest.raises(ConfigError, match=why):
            config.coerce(key, [value], where="t")


def test_inventory_host_lists_hold_only_host_names_and_addresses() -> None:
    ok = ["localhost,", "web1,web2.example.com", "127.0.0.1,::1,"]
    assert config.coerce("run.inventory", ok, where="t") == ok
    for bad in ("web[1:3],", "a,-b", "a,b c", "all:!db,", "x,$(id)"):
        with pytest.raises(ConfigError, match="not a host name or an IP address"):
            config.coerce("run.inventory", [bad], where="t")
    with pytest.raises(ConfigError, match="more than 64"):
        config.coerce("run.inventory", ["a"] * 65, where="t")


def test_default_limit_is_localhost_this_hosts_names_and_loopback() -> None:
    limit = default_limit("web-1.eu-west-1.compute.internal", "web-1", "../../x", "a,b", "")
    names = limit.split(",")
    assert names[0] == "localhost" and names[-1] == "127.0.0.1"
    assert "web-1.eu-west-1.compute.internal" in names and "web-1" in names
    assert not any(n in names for n in ("../../x", "a", "b", ""))
    assert len(names) == len(set(names))
