"""The simulator's launch description: tags, user-data, the instance's view of URLs and paths."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pullboot.errors import ConfigError
from pullboot.sim import HOST_FROM_INSTANCE
from pullboot.sim.instance import dropin_text
from pullboot.sim.s3 import bundle_keys, pack
from pullboot.sim.spec import (
    InstanceSpec,
    absolute_source,
    for_instance,
    local_path,
    new_instance_id,
    parse_pairs,
)
from pullboot.userdata import parse_user_data


def spec(**kwargs: object) -> InstanceSpec:
    return InstanceSpec(name="web-1", instance_id="i-0123456789abcdef0", **kwargs)  # type: ignore[arg-type]


def test_roles_become_the_role_tag_and_tags_are_added() -> None:
    s = spec(roles=("base", "web"), tags={"env": "prod"})
    assert s.all_tags() == {"Name": "pullboot-sim-web-1", "pullboot:role": "base,web",
                            "env": "prod"}


def test_source_ref_and_vars_become_cloud_config_user_data(tmp_path: Path) -> None:
    s = spec(source="git+http://127.0.0.1:8080/boot.git", ref="prod", vars={"env": "prod"})
    raw = s.user_data_bytes()
    assert raw is not None and raw.startswith(b"#cloud-config\n")
    assert parse_user_data(raw) == {"source": f"git+http://{HOST_FROM_INSTANCE}:8080/boot.git",
                                    "ref": "prod", "vars": {"env": "prod"}}


def test_user_data_file_is_served_verbatim_and_names_the_source() -> None:
    text = "#cloud-config\npullboot:\n  source: s3://b/{role}.tar.gz\n"
    s = spec(user_data=text)
    assert s.user_data_bytes() == text.encode()
    assert s.served_source() == "s3://b/{role}.tar.gz"
    assert s.source_kind() == "s3"


def test_templated_user_data_names_the_source_the_instance_will_render() -> None:
    text = ("## template: jinja\n#cloud-config\npullboot:\n"
            "  source: s3://b-{{ v1.region }}/{role}.tar.gz\n")
    assert spec(user_data=text).served_source() == "s3://b-eu-west-1/{role}.tar.gz"


def test_user_data_file_and_source_flags_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="--user-data"):
        spec(user_data="#cloud-config\n", source="/srv/boot")


@pytest.mark.parametrize("name", ["Web", "-x", "a" * 41, "a_b", ""])
def test_bad_instance_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        InstanceSpec(name=name, instance_id="i-0")


@pytest.mark.parametrize(("value", "expected"), [
    ("http://127.0.0.1:5000", f"http://{HOST_FROM_INSTANCE}:5000"),
    ("git+http://localhost:81/r.git", f"git+http://{HOST_FROM_INSTANCE}:81/r.git"),
    ("http://u:p@127.0.0.1:9/x", f"http://u:p@{HOST_FROM_INSTANCE}:9/x"),
    ("https://git.example.com/r.git", "https://git.example.com/r.git"),
    ("s3://b/k.tar.gz", "s3://b/k.tar.gz"),
    ("true", "true"),
])
def test_loopback_urls_are_rewritten_for_the_instance(value: str, expected: str) -> None:
    assert for_instance(value) == expected


def test_local_sources_are_mounted_at_their_absolute_path(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path(".") == tmp_path
    assert local_path(f"git+file://{tmp_path}") == tmp_path
    assert local_path("file:///srv/boot") == Path("/srv/boot")
    assert local_path("git@github.com:org/repo") is None
    assert local_path("https://x/y.git") is None
    assert absolute_source(".") == str(tmp_path)
    assert absolute_source("git+file:///srv/r") == "git+file:///srv/r"
    assert spec(source=".").mounts() == [tmp_path]
    assert spec(source="s3://b/k.tar.gz").mounts() == []


def test_unit_environment_points_at_the_emulators() -> None:
    s = spec(source="s3://b/k.tgz", env={"AWS_ENDPOINT_URL_AUTO_SCALING": "http://127.0.0.1:7"})
    env = s.unit_environment(imds_url="http://127.0.0.1:1", s3_url="http://127.0.0.1:2")
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://{HOST_FROM_INSTANCE}:1"
    assert env["AWS_ENDPOINT_URL"] == f"http://{HOST_FROM_INSTANCE}:2"
    assert env["AWS_ENDPOINT_URL_AUTO_SCALING"] == f"http://{HOST_FROM_INSTANCE}:7"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"


def test_dropin_quotes_values_for_systemd() -> None:
    text = dropin_text({"A": 'say "hi" 100%', "B": "back\\slash"})
    assert 'Environment="A=say \\"hi\\" 100%%"' in text
    assert 'Environment="B=back\\\\slash"' in text
    assert text.splitlines()[1] == "[Service]"


def test_spec_round_trips_through_its_file(tmp_path: Path) -> None:
    s = spec(roles=("web",), source="/srv/boot", vars={"a": "1"}, ports=(80, 443))
    s.save(tmp_path)
    assert InstanceSpec.load(tmp_path) == s


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "b==2", "c="], what="--tag") == {"a": "1", "b": "=2", "c": ""}
    with pytest.raises(ConfigError, match="--tag"):
        parse_pairs(["novalue"], what="--tag")


def test_instance_ids_look_like_ec2s() -> None:
    iid = new_instance_id()
    assert iid.startswith("i-") and len(iid) == 19
    assert int(iid[2:], 16) >= 0


def test_bundle_keys_per_role() -> None:
    assert bundle_keys("s3://b/r/{role}.tar.gz", ["web", "base", "web"]) == (
        "b", ["r/web.tar.gz", "r/base.tar.gz"])
    assert bundle_keys("s3://b/all.zip", []) == ("b", ["all.zip"])


def test_pack_leaves_out_vcs_and_caches(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for rel in ("playbooks/web.yml", ".git/config", "roles/x/__pycache__/a.pyc", ".venv/bin/p"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    with tarfile.open(fileobj=io.BytesIO(pack(tree, "k.tar.gz"))) as tar:
        assert tar.getnames() == ["playbooks/web.yml"]


def test_sim_boot_e_is_read_as_ansible_reads_it(tmp_path: Path) -> None:
    # The simulator's -e had the same bug as pullboot run's: 'a=1 b=2' became a="1 b=2".
    from pullboot.cli import build_parser
    from pullboot.sim.cli import _spec

    args = build_parser().parse_args(["sim", "boot", "--source", str(tmp_path), "-e",
                                      "a=1 b='x y'", "-e", '{"n": [1, 2]}'])
    s = _spec(args)
    assert dict(s.vars) == {"a": "1", "b": "x y", "n": [1, 2]}
    assert parse_user_data(s.user_data_bytes())["vars"] == {"a": "1", "b": "x y", "n": [1, 2]}


def test_a_directory_source_reaches_the_instance_as_the_hosts_setting(tmp_path: Path) -> None:
    # User-data may not choose a directory source (trust policy): the simulated image's unit
    # environment carries it, as an image builder would.
    s = spec(source=str(tmp_path), roles=("web",))
    assert s.user_data_bytes() is None
    env = s.unit_environment(imds_url="http://127.0.0.1:1", s3_url=None)
    assert env["PULLBOOT_SOURCE"] == str(tmp_path)
    git = spec(source=f"git+file://{tmp_path}", roles=("web",))
    assert b"source: git+file://" in (git.user_data_bytes() or b"")
    assert "PULLBOOT_SOURCE" not in git.unit_environment(imds_url="http://127.0.0.1:1",
                                                        s3_url=None)
