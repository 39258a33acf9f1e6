"""Role names, role resolution and the tag / user-data layers (tests/fixtures/tags/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import errors
from pullboot.config import Layer, resolve
from pullboot.errors import ConfigError, RoleError
from pullboot.identity import Identity
from pullboot.roles import (
    ROLE_PATTERN,
    RoleChoice,
    check_role_name,
    resolve_roles,
    tag_layer,
    user_data_layer,
)
from pullboot.userdata import parse_user_data

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TAG_CASES: dict[str, dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "tags" / "cases.yaml").read_text(encoding="utf-8"))


def _identity(tags: dict[str, str], tags_from: str | None) -> Identity:
    # hostname/fqdn given so that no DNS lookup happens.
    return Identity(instance_id="i-0abc", region="eu-west-1", hostname="ip-10-0-0-5",
                    fqdn="ip-10-0-0-5.eu-west-1.compute.internal", tags=tags,
                    tags_from=tags_from, source="imds")


# -- role names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "web-1", "a.b_c", "0web", "a" * 64])
def test_check_role_name_accepts(name: str) -> None:
    assert check_role_name(name, origin="cli") == name


@pytest.mark.parametrize("name", [
    "../../etc", "web;touch x", "", "  ", "Web", "web/x", "..", "a..b", "a" * 65, "web\n",
    "w\u00e9b", "-web", ".web", "_web", "web x", "web,db", "web\x00", "\u0430pi",
])
def test_check_role_name_refuses(name: str) -> None:
    with pytest.raises(RoleError) as info:
        check_role_name(name, origin="imds-tag:pullboot:role")
    exc = info.value
    assert repr(name) in exc.message
    assert "imds-tag:pullboot:role" in exc.message
    assert ROLE_PATTERN in (exc.hint or "")
    assert exc.exit_code == errors.EXIT_IDENTITY


@pytest.mark.parametrize("name", ["", " ", "\t\n"])
def test_blank_role_name_says_blank(name: str) -> None:
    with pytest.raises(RoleError, match="is blank"):
        check_role_name(name, origin="env:PULLBOOT_ROLE")


def test_huge_role_value_is_shown_truncated() -> None:
    value = "x" * 10 * 1024 + ";rm -rf /"
    with pytest.raises(RoleError) as info:
        check_role_name(value, origin="user-data")
    message = info.value.message
    assert len(message) < 300
    assert repr("x" * 80) in message
    assert f"({len(value)} chars)" in message
    assert "rm -rf" not in message
    assert ROLE_PATTERN in str(info.value)


# -- resolve_roles -------------------------------------------------------------------

LOOKED = [
    "--role on the command line: not given",
    "PULLBOOT_ROLE / PULLBOOT_ROLES: not set",
    "user-data 'pullboot:' section: none",
    "instance tag 'pullboot:role': instance metadata tags are not enabled (IMDS answered 404)",
    "config file /etc/pullboot/pullboot.yml: no 'role'/'roles'",
]


def test_no_role_error_lists_every_place_looked() -> None:
    with pytest.raises(RoleError) as info:
        resolve_roles(resolve([Layer("cli", {})]), looked=LOOKED)
    message = info.value.message
    for place in LOOKED:
        assert f"  - {place}\n" in message + "\n"
    assert message.count("\n  - ") == len(LOOKED)
    assert "--role" in (info.value.hint or "")


def test_resolve_roles_keeps_order_and_origin() -> None:
    settings = resolve([Layer("cli", {}), Layer("imds-tag", {"roles": ["base", "web"]},
                                                 {"roles": "imds-tag:pullboot:role"})])
    assert resolve_roles(settings, looked=LOOKED) == (
        RoleChoice("base", "imds-tag:pullboot:role"), RoleChoice("web", "imds-tag:pullboot:role"))


def test_resolve_roles_refuses_duplicates() -> None:
    settings = resolve([Layer("user-data", {"roles": ["web", "base", "web"]})])
    with pytest.raises(RoleError) as info:
        resolve_roles(settings, looked=LOOKED)
    assert "twice" in info.value.message
    assert "user-data" in info.value.message


def test_resolve_roles_refuses_a_bad_name_naming_its_origin() -> None:
    settings = resolve([Layer("env", {"roles": ["base", "../etc"]},
                              {"roles": "env:PULLBOOT_ROLES"})])
    with pytest.raises(RoleError) as info:
        resolve_roles(settings, looked=LOOKED)
    assert "'../etc'" in info.value.message
    assert "env:PULLBOOT_ROLES" in info.value.message


# -- tag_layer (fixture cases) -----------------------------------------------------------


@pytest.mark.parametrize("case", sorted(TAG_CASES))
def test_tag_layer(case: str) -> None:
    spec = TAG_CASES[case]
    identity = _identity(spec["tags"], spec["tags_from"])
    role_tag = spec.get("role_tag", "pullboot:role")
    if "error" in spec:
        with pytest.raises(getattr(errors, spec["error"])) as info:
            tag_layer(identity, role_tag=role_tag)
        for part in spec["match"]:
            assert part in info.value.message
        return
    layer = tag_layer(identity, role_tag=role_tag)
    expect = spec["expect"]
    assert layer.origin == expect["origin"]
    assert dict(layer.values) == expect["values"]
    assert dict(layer.origins) == expect["origins"]


def test_tag_origins_survive_resolution() -> None:
    spec = TAG_CASES["imds_all_kinds"]
    layer = tag_layer(_identity(spec["tags"], "imds"), role_tag="pullboot:role")
    allow = {"trust.tags": ["ref", "source"]}  # the policy must allow these tags
    settings = resolve([Layer("cli", {}), layer, Layer("config", {"ref": "main", **allow})])
    assert settings.origin("roles") == "imds-tag:pullboot:role"
    assert settings.origin("ref") == "imds-tag:pullboot:ref"
    assert settings.vars["env"].origin == "imds-tag:pullboot:var:env"
    assert resolve_roles(settings, looked=[])[1] == RoleChoice("web", "imds-tag:pullboot:role")


def test_role_tag_value_is_split_and_trimmed() -> None:
    layer = tag_layer(_identity({"pullboot:role": " base , web "}, "imds"),
                      role_tag="pullboot:role")
    assert layer.values["roles"] == ["base", "web"]


# -- user_data_layer -------------------------------------------------------------------------


def test_user_data_layer_from_the_cloud_config_fixture() -> None:
    raw = (FIXTURES / "userdata" / "cloud_config.yaml").read_bytes()
    layer = user_data_layer(parse_user_data(raw))
    assert layer.origin == "user-data"
    assert layer.origins == {}
    assert dict(layer.values) == {
        "roles": ["base", "web"], "source": "git+https://github.com/acme/infra.git",
        "ref": "v1.4.2", "vars": {"env": "prod", "http_port": 8080,
                                  "features": ["tls", "http2"]}}


@pytest.mark.parametrize("section", [None, {}])
def test_user_data_layer_empty(section: dict[str, Any] | None) -> None:
    assert user_data_layer(section) == Layer("user-data", {})


def test_user_data_layer_refuses_bad_var_name() -> None:
    with pytest.raises(ConfigError) as info:
        user_data_layer({"role": "web", "vars": {"ok_name": 1, "bad-name": 2}})
    assert "'bad-name'" in info.value.message
    assert "user-data" in info.value.message


def test_user_data_layer_refuses_unknown_key_with_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        user_data_layer({"rol": "web"})
    assert "'rol'" in info.value.message
    assert "user-data" in info.value.message
    assert "did you mean 'role'" in (info.value.hint or "")


def test_user_data_beats_tags_and_config_end_to_end() -> None:
    raw = (FIXTURES / "userdata" / "mime_multipart.txt").read_bytes()
    tags = tag_layer(_identity({"pullboot:role": "db", "pullboot:ref": "v9"}, "ec2-api"),
                     role_tag="pullboot:role")
    settings = resolve([Layer("cli", {}), Layer("env", {}),
                        user_data_layer(parse_user_data(raw)), tags,
                        Layer("config", {"roles": ["base"], "ref": "main",
                                         "trust.tags": ["ref"]})])
    assert resolve_roles(settings, looked=[]) == (RoleChoice("web", "user-data"),)
    assert (settings.get("ref"), settings.origin("ref")) == ("v9", "ec2-api-tag:pullboot:ref")
    assert settings.vars["env"].origin == "user-data"
