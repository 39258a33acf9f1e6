"""The trust policy covers every setting; values are checked the way git and ansible read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pullboot import config, trust
from pullboot.config import Layer, resolve
from pullboot.errors import ConfigError, TrustError
from pullboot.trust import OriginKind, Tier
from pullboot.values import check_git_ref, check_source_url, safe_host_stem

README = Path(__file__).resolve().parents[2] / "README.md"
UNTRUSTED = (OriginKind.USER_DATA, OriginKind.TAG)


@pytest.mark.parametrize("opt", config.SCHEMA, ids=lambda o: o.key)
def test_every_setting_has_a_declared_tier_the_policy_enforces(opt: config.Option) -> None:
    policy = config.policy_of({})
    assert isinstance(opt.tier, Tier)
    for kind in (OriginKind.CLI, OriginKind.ENV, OriginKind.CONFIG):
        assert policy.allowed(kind, opt.key)
    expected = {Tier.TAG: {OriginKind.USER_DATA, OriginKind.TAG},
                Tier.LAUNCH: {OriginKind.USER_DATA}, Tier.HOST: set(), Tier.EARLY: set()}
    assert {k for k in UNTRUSTED if policy.allowed(k, opt.key)} == expected[opt.tier]
    # ...and resolve() enforces it for a layer of each untrusted kind.
    value = opt.default if opt.kind != "opt-str" else "x"
    for kind, origin in ((OriginKind.USER_DATA, "user-data"), (OriginKind.TAG, "imds-tag")):
        layer = Layer(origin, {opt.key: value})
        assert layer.kind is kind
        if kind in expected[opt.tier]:
            resolve([layer])
        else:
            with pytest.raises(TrustError) as info:
                resolve([layer])
            assert repr(opt.key) in info.value.message


@pytest.mark.parametrize("opt", config.SCHEMA, ids=lambda o: o.key)
def test_readme_documents_who_may_set_every_setting(opt: config.Option) -> None:
    text = README.read_text()
    assert f"| `{opt.key}` |" in text, f"README's trust table lacks {opt.key}"


def test_what_decides_code_or_data_flow_is_not_settable_from_tags_by_default() -> None:
    policy = config.policy_of({})
    assert policy.tags == {"roles", "vars"}
    for key in ("source", "ref", "results.s3", "signals.lifecycle_hook", "git.token",
                "git.ssh_key", "git.verify_commit", "s3.require_signature", "s3.signature_keys",
                "secret_vars", "vault_password", "run.check", "state_dir", "trust.tags"):
        assert not policy.allowed(OriginKind.TAG, key), key
    for key in ("git.verify_commit", "git.allowed_signers", "git.known_hosts",
                "git.accept_new_host_key", "s3.checksum", "s3.require_signature",
                "s3.max_bytes", "git.token", "git.ssh_key", "secret_vars", "imds.allow_v1"):
        assert not policy.allowed(OriginKind.USER_DATA, key), key


def test_config_widens_and_narrows_and_tags_imply_user_data() -> None:
    policy = config.policy_of({"trust.tags": ["ref"], "trust.host_only": ["source"]})
    assert policy.allowed(OriginKind.TAG, "ref")
    assert policy.allowed(OriginKind.USER_DATA, "ref")
    assert not policy.allowed(OriginKind.USER_DATA, "source")


@pytest.mark.parametrize(("doc", "match"), [
    ({"trust.tags": ["nope"]}, "'nope', which is not a setting"),
    ({"trust.tags": ["state_dir"]}, "read before user-data and tags"),
    ({"trust.tag_vars": ["bad-name"]}, "not a variable name"),
])
def test_bad_policy_is_a_config_error(doc: dict[str, list[str]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config.policy_of(doc)


def test_trust_settings_from_user_data_or_tags_cannot_widen_the_policy() -> None:
    for origin in ("user-data", "imds-tag"):
        with pytest.raises(TrustError, match="read before user-data and tags"):
            resolve([Layer(origin, {"trust.tags": ["source"]})])


def test_reserved_names_cover_ansible_magic_and_connection_variables() -> None:
    from ansible import constants as C

    for names in C.MAGIC_VARIABLE_MAPPING.values():
        for name in names:
            assert trust.is_reserved_var(name), name
    for name in ("hostvars", "groups", "group_names", "inventory_hostname", "omit",
                 "playbook_dir", "ansible_facts", "pullboot"):
        assert trust.is_reserved_var(name), name
    for name in ("env", "http_port", "web_title", "port", "user"):
        assert not trust.is_reserved_var(name), name


REFS = ["main", "v1.2.0", "release/2026-12", "refs/heads/main", "HEAD", "a" * 40, "feature_x",
        "-x", "--upload-pack=x", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[x",
        "a\\b", ".hidden", "x/.y", "x.lock", "x/y.lock", "/x", "x/", "x//y", "x.", "@",
        "a@{1}", "a\x01b", "a\x7fb", "", "ü-branch", "@x", "x@y"]


@pytest.mark.parametrize("ref", REFS)
def test_ref_check_agrees_with_git_check_ref_format(ref: str) -> None:
    if not ref:
        git_ok = False
    else:
        git_ok = subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref],
                                capture_output=True, check=False).returncode == 0
    git_ok = git_ok and not ref.startswith("-")  # pullboot refuses options outright
    try:
        check_git_ref(ref)
        ours = True
    except ValueError:
        ours = False
    assert ours == git_ok, (ref, ours, git_ok)


@pytest.mark.parametrize("url", ["/srv/boot", "file:///srv/boot", "git+https://h/r.git",
                                 "git+ssh://git@h/r", "git://h/r", "git+file:///srv/r",
                                 "git@github.com:org/repo.git", "s3://b/k.tar.gz"])
def test_ordinary_source_urls_pass(url: str) -> None:
    assert check_source_url(url) == url


@pytest.mark.parametrize("url", ["-oProxyCommand=x", "git+ext::sh -c x", "ext::sh%20-c%20x.git",
                                 "git+fd::3", "git+svn://h/r", "a\nb", "x" * 3000, ""])
def test_hostile_source_urls_fail(url: str) -> None:
    with pytest.raises(ValueError):
        check_source_url(url)


@pytest.mark.parametrize(("name", "ok"), [
    ("ip-10-0-0-7", True), ("web1.eu-west-1.compute.internal", True), ("../../x/pb", False),
    ("a/b", False), ("", False), ("-x", False), ("x" * 64, False), ("a..b", False),
])
def test_only_host_names_become_fallback_playbook_names(name: str, ok: bool) -> None:
    assert (safe_host_stem(name) == name) is ok


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="finite"):
        config.coerce("splay", value, where="--splay")
