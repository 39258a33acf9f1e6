"""Which playbooks a fetched tree gives for the resolved roles (or the fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullboot.errors import PlaybookError, SourceError
from pullboot.playbooks import available_roles, fallback, for_roles

FQDN = "ip-10-0-0-5.eu-west-1.compute.internal"
HOST = "ip-10-0-0-5"


def _tree(root: Path, *files: str) -> Path:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("- hosts: all\n")
    return root


def test_for_roles_keeps_the_order_given(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "playbooks/base.yml", "playbooks/web.yml", "playbooks/db.yml")
    assert for_roles(tree, ["web", "base"]) == (
        tree / "playbooks/web.yml", tree / "playbooks/base.yml")


def test_for_roles_accepts_yaml_and_prefers_yml(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "playbooks/web.yaml", "playbooks/db.yml", "playbooks/db.yaml")
    assert for_roles(tree, ["web", "db"]) == (
        tree / "playbooks/web.yaml", tree / "playbooks/db.yml")


def test_missing_role_lists_gaps_and_available_roles(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "playbooks/base.yml", "playbooks/web.yaml", "playbooks/README.md",
                 "playbooks/dir.yml/inner.yml", "api.yml")
    with pytest.raises(PlaybookError) as info:
        for_roles(tree, ["base", "api", "cache"])
    message = info.value.message
    assert "role(s) api, cache" in message
    assert "roles with playbooks: base, web" in message
    assert isinstance(info.value, SourceError)
    assert info.value.exit_code == 4


def test_missing_role_in_a_tree_without_playbooks_dir(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "site.yml")
    with pytest.raises(PlaybookError, match="roles with playbooks: none"):
        for_roles(tree, ["web"])
    assert available_roles(tree) == []


@pytest.mark.parametrize(("files", "expected"), [
    (["local.yml", f"{HOST}.yml", f"{FQDN}.yml"], f"{FQDN}.yml"),
    (["local.yml", f"{HOST}.yaml"], f"{HOST}.yaml"),
    (["local.yml", "site.yml"], "local.yml"),
    (["local.yaml"], "local.yaml"),
    ([f"playbooks/{FQDN}.yml", f"playbooks/{HOST}.yml", "playbooks/local.yml"],
     f"playbooks/{FQDN}.yml"),
    (["playbooks/local.yml", f"playbooks/{HOST}.yml"], f"playbooks/{HOST}.yml"),
    # The name decides before the folder: a more specific playbook always wins.
    (["local.yml", f"playbooks/{FQDN}.yml"], f"playbooks/{FQDN}.yml"),
    ([f"{FQDN}.yml", f"playbooks/{FQDN}.yml"], f"{FQDN}.yml"),
], ids=["fqdn", "hostname", "local", "local-yaml", "sub-fqdn", "sub-hostname",
        "name-before-folder", "root-same-name"])
def test_fallback_order(tmp_path: Path, files: list[str], expected: str) -> None:
    tree = _tree(tmp_path, *files)
    assert fallback(tree, fqdn=FQDN, hostname=HOST) == tree / expected


def test_no_fallback_playbook(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "site.yml", "playbooks/web.yml")
    (tmp_path / "local.yml").mkdir()  # a directory is not a playbook
    assert fallback(tree, fqdn=FQDN, hostname=HOST) is None


def test_fallback_when_fqdn_is_the_hostname(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "playbooks/box.yml")
    assert fallback(tree, fqdn="box", hostname="box") == tree / "playbooks/box.yml"
