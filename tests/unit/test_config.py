"""Settings: schema coercion, config files (tests/fixtures/config/), env, layer precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import config
from pullboot.config import Layer, coerce, env_layer, flatten, load_file, resolve
from pullboot.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "expected.yaml").read_text(encoding="utf-8"))


def test_every_config_fixture_has_an_expected_outcome() -> None:
    assert {p.stem for p in FIXTURES.glob("*.yml")} == set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_load_file(case: str) -> None:
    spec = EXPECTED[case]
    path = FIXTURES / f"{case}.yml"
    if "error" not in spec:
        layer = load_file(path, required=True)
        assert layer.origin == "config"
        assert dict(layer.values) == spec["values"]
        return
    with pytest.raises(ConfigError) as info:
        load_file(path, required=True)
    exc = info.value
    for part in spec.get("message", []):
        assert part.replace("{path}", str(path)) in exc.message
    for part in spec.get("hint", []):
        assert part in (exc.hint or "")
    assert exc.exit_code == 2


def test_missing_optional_file_is_an_empty_config_layer(tmp_path: Path) -> None:
    layer = load_file(tmp_path / "absent.yml", required=False)
    assert layer == Layer("config", {})


def test_missing_required_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_file(path, required=True)
    assert str(path) in info.value.message
    assert "does not exist" in info.value.message
    assert "--config" in (info.value.hint or "")


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_file(tmp_path, required=True)  # a directory


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    # A file saved as Latin-1 by an editor: must be a ConfigError (exit 2 with a
    # message), not a UnicodeDecodeError traceback.
    path = tmp_path / "pullboot.yml"
    path.write_bytes("vars:\n  owner: Zo\xeb\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_file(path, required=True)
    assert str(path) in info.value.message


@pytest.mark.parametrize(("key", "raw", "value"), [
    ("imds.enabled", "false", False),
    ("imds.enabled", " YES ", True),
    ("imds.enabled", "0", False),
    ("imds.enabled", True, True),
    ("roles", "base, web", ["base", "web"]),
    ("roles", ["web"], ["web"]),
    ("keep_runs", "7", 7),
    ("keep_runs", 0, 0),
    ("imds.timeout", "0.5", 0.5),
    ("imds.budget", 3, 3.0),
    ("source", None, None),
    ("source", "/srv/x", "/srv/x"),
    ("on_source_failure", "last-good", "last-good"),
    ("vars", {"env": "prod"}, {"env": "prod"}),
])
def test_coerce_accepts(key: str, raw: Any, value: Any) -> None:
    got = coerce(key, raw, where="test")
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(("key", "raw", "expected"), [
    ("keep_runs", True, "whole number"),
    ("keep_runs", 2.5, "whole number"),
    ("keep_runs", "-3", ">= 0"),
    ("imds.timeout", "-1", ">= 0"),
    ("imds.timeout", False, "a number"),
    ("imds.enabled", 1, "true or false"),
    ("roles", ["web", 5], "a list of strings"),
    ("roles", {"web": 1}, "a list of strings"),
    ("source", 5, "a string"),
    ("role_tag", None, "a string"),
    ("vars", ["env=prod"], "a mapping"),
    ("vars", {1: "x"}, "a mapping"),
    ("on_source_failure", "Last-Good", "one of last-good|fail"),
])
def test_coerce_refuses_naming_key_place_and_type(key: str, raw: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce(key, raw, where="environment variable X")
    text = str(info.value)
    assert repr(key) in info.value.message
    assert "environment variable X" in info.value.message
    assert expected in text


def test_unknown_key_far_from_any_setting_lists_known_settings() -> None:
    with pytest.raises(ConfigError) as info:
        coerce("zzzzqqq", 1, where="config file /x")
    hint = info.value.hint or ""
    assert "did you mean" not in hint
    assert "source" in hint
    assert "imds.enabled" in hint


def test_flatten_nests_sections_and_applies_aliases() -> None:
    flat = flatten({"role": "web", "imds": {"tags": "off"}, "run": {"limit": "h1"},
                    "vars": {"a": {"nested": 1}}}, where="user-data")
    assert flat == {"roles": ["web"], "imds.tags": False, "run.limit": "h1",
                    "vars": {"a": {"nested": 1}}}


def test_flatten_unknown_key_in_section_names_dotted_key_and_place() -> None:
    with pytest.raises(ConfigError) as info:
        flatten({"run": {"chek": True}}, where="user-data 'pullboot:' section")
    assert "'run.chek'" in info.value.message
    assert "user-data 'pullboot:' section" in info.value.message
    assert "did you mean 'run.check'" in (info.value.hint or "")


# -- precedence ----------------------------------------------------------------------

LAYERS = (
    Layer("cli", {"source": "cli-src"}),
    Layer("env", {"source": "env-src"}, {"source": "env:PULLBOOT_SOURCE"}),
    Layer("user-data", {"source": "ud-src"}),
    Layer("imds-tag", {"source": "tag-src"}, {"source": "imds-tag:pullboot:source"}),
    # The trust policy lets tags set source only because the config file says so.
    Layer("config", {"source": "cfg-src", "trust.tags": ["source"]}),
)


@pytest.mark.parametrize(("drop", "value", "origin"), [
    (0, "cli-src", "cli"),
    (1, "env-src", "env:PULLBOOT_SOURCE"),
    (2, "ud-src", "user-data"),
    (3, "tag-src", "imds-tag:pullboot:source"),
    (4, "cfg-src", "config"),
    (5, None, "default"),
])
def test_precedence_cli_env_userdata_tags_config_default(drop: int, value: Any,
                                                         origin: str) -> None:
    settings = resolve(LAYERS[drop:])
    assert settings.get("source") == value
    assert settings.origin("source") == origin


def test_each_key_resolves_independently_with_its_own_origin() -> None:
    settings = resolve([
        Layer("cli", {"roles": ["web"]}),
        Layer("env", {"keep_runs": 4}, {"keep_runs": "env:PULLBOOT_KEEP_RUNS"}),
        Layer("config", {"keep_runs": 9, "ref": "main", "roles": ["db"]}),
    ])
    assert (settings.get("roles"), settings.origin("roles")) == (["web"], "cli")
    assert (settings.get("keep_runs"), settings.origin("keep_runs")) == (
        4, "env:PULLBOOT_KEEP_RUNS")
    assert (settings.get("ref"), settings.origin("ref")) == ("main", "config")
    assert (settings.get("keep_releases"), settings.origin("keep_releases")) == (3, "default")
    assert {k for k, r in settings.resolved.items() if r.origin == "default"} == (
        set(config.OPTIONS) - {"roles", "keep_runs", "ref", "vars"})


def test_false_and_empty_values_still_win_over_lower_layers() -> None:
    settings = resolve([Layer("cli", {"imds.enabled": False, "run.tags": []}),
                        Layer("config", {"imds.enabled": True, "run.tags": ["x"]})])
    assert settings.get("imds.enabled") is False
    assert settings.get("run.tags") == []
    assert settings.origin("run.tags") == "cli"


def test_vars_merge_per_name_with_per_name_origin() -> None:
    settings = resolve([
        Layer("cli", {"vars": {"a": "cli"}}),
        Layer("env", {}),
        Layer("user-data", {"vars": {"a": "ud", "b": "ud"}}),
        Layer("imds-tag", {"vars": {"b": "tag", "c": "tag"}},
              {"vars.b": "imds-tag:pullboot:var:b", "vars.c": "imds-tag:pullboot:var:c"}),
        Layer("config", {"vars": {"c": "cfg", "d": "cfg"}}),
    ])
    assert settings.var_values() == {"a": "cli", "b": "ud", "c": "tag", "d": "cfg"}
    assert {n: r.origin for n, r in settings.vars.items()} == {
        "a": "cli", "b": "user-data", "c": "imds-tag:pullboot:var:c", "d": "config"}
    assert settings.get("vars") == settings.var_values()
    assert settings.origin("vars") == "merged"


def test_no_vars_anywhere_is_an_empty_mapping() -> None:
    settings = resolve([Layer("cli", {}), Layer("config", {"vars": {}})])
    assert settings.get("vars") == {}
    assert settings.vars == {}


# -- environment ---------------------------------------------------------------------


def test_env_layer_parses_prefixed_variables_with_origins() -> None:
    layer = env_layer({
        "PULLBOOT_IMDS_ENABLED": "false", "PULLBOOT_ROLES": "a,b", "PULLBOOT_KEEP_RUNS": "5",
        "PULLBOOT_RUN_SKIP_TAGS": "slow, flaky", "PULLBOOT_STATE_DIR": "/tmp/pb",
        "PULLBOOT_VARS": "{not: used}", "PULLBOOT_SORCE": "typo-ignored", "HOME": "/root",
    })
    assert layer.origin == "env"
    assert dict(layer.values) == {
        "imds.enabled": False, "roles": ["a", "b"], "keep_runs": 5,
        "run.skip_tags": ["slow", "flaky"], "state_dir": "/tmp/pb"}
    assert dict(layer.origins) == {
        "imds.enabled": "env:PULLBOOT_IMDS_ENABLED", "roles": "env:PULLBOOT_ROLES",
        "keep_runs": "env:PULLBOOT_KEEP_RUNS", "run.skip_tags": "env:PULLBOOT_RUN_SKIP_TAGS",
        "state_dir": "env:PULLBOOT_STATE_DIR"}


def test_env_role_singular_is_an_alias() -> None:
    layer = env_layer({"PULLBOOT_ROLE": "x"})
    assert layer.values == {"roles": ["x"]}
    assert layer.origin_of("roles") == "env:PULLBOOT_ROLE"


def test_env_roles_plural_wins_over_singular() -> None:
    layer = env_layer({"PULLBOOT_ROLE": "x", "PULLBOOT_ROLES": "a,b"})
    assert layer.values == {"roles": ["a", "b"]}
    assert layer.origin_of("roles") == "env:PULLBOOT_ROLES"


def test_env_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        env_layer({"PULLBOOT_IMDS_ENABLED": "maybe"})
    assert "environment variable PULLBOOT_IMDS_ENABLED" in info.value.message
    assert "true or false" in str(info.value)


def test_env_layer_resolves_above_config() -> None:
    settings = resolve([Layer("cli", {}), env_layer({"PULLBOOT_IMDS_ENABLED": "false"}),
                        Layer("config", {"imds.enabled": True})])
    assert settings.get("imds.enabled") is False
    assert settings.origin("imds.enabled") == "env:PULLBOOT_IMDS_ENABLED"
