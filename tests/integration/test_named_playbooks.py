"""Named playbooks (ansible-pull's ``playbook.yml`` arguments): site.yml-style repos boot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import run_cli


def _play(name: str) -> str:
    return f"""\
- name: {name}
  hosts: all
  gather_facts: false
  tasks:
    - name: mark {name}
      ansible.builtin.lineinfile:
        path: "{{{{ out_dir }}}}/ran.txt"
        line: {name}
        create: true
        mode: "0644"
"""


def _tree() -> dict[str, str]:
    return {"site.yml": _play("site"), "play-local.yml": _play("play-local"),
            "deploy/app.yml": _play("app"), "playbooks/web.yml": _play("web")}


def test_positional_and_flag_playbooks_run_in_order(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(_tree())
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "site.yml",
                  "--playbook", "deploy/app.yml", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["playbooks"] == ["deploy/app.yml", "site.yml"]
    assert (out_dir / "ran.txt").read_text() == "app\nsite\n"


def test_playbooks_setting_from_the_config_file_beats_roles(make_repo: Any, out_dir: Path,
                                                            tmp_path: Path) -> None:
    repo = make_repo(_tree())
    cfg = tmp_path / "pullboot.yml"
    cfg.write_text("playbooks: [play-local.yml]\nroles: [web]\n")
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["playbooks"] == ["play-local.yml"]
    assert (out_dir / "ran.txt").read_text() == "play-local\n"
    plan = run_cli("plan", "--source", repo.url)
    assert "playbooks  play-local.yml\n" in plan.stdout, plan.stdout


def test_named_playbook_must_be_a_file_inside_the_tree(make_repo: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text(_play("outside"))
    repo = make_repo(_tree())
    (repo.path / "link.yml").symlink_to(outside)
    repo.commit({}, "link out")
    for name, rc, words in (("nope.yml", 4, "playbook(s) nope.yml not found in the source"),
                            ("link.yml", 4, "playbook(s) link.yml not found"),
                            ("deploy", 4, "playbook(s) deploy not found"),
                            ("../outside.yml", 2, "holds '..'"),
                            (str(outside), 2, "not relative to the fetched tree")):
        res = run_cli("run", "--source", repo.url, "--playbook", name, "--json")
        assert res.rc == rc, (name, res.stderr)
        assert words in res.stderr, (name, res.stderr)
    assert "playbooks at its root: play-local.yml, site.yml" in run_cli(
        "run", "--source", repo.url, "nope.yml").stderr
    assert not (tmp_path / "out" / "ran.txt").exists()


def test_user_data_may_name_playbooks_and_inventory_tags_may_not(make_repo: Any, make_imds: Any,
                                                                 out_dir: Path) -> None:
    repo = make_repo({**_tree(), "hosts.ini": "[webservers]\nweb9.invalid\n"})
    make_imds(user_data=(f"#cloud-config\npullboot:\n  source: {repo.url}\n"
                         "  playbooks: [site.yml]\n  run: {inventory: [hosts.ini]}\n").encode())
    res = run_cli("run", "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["playbooks"] == ["site.yml"]
    assert res.report["settings"]["playbooks"]["origin"] == "user-data"
    assert set(res.report["stats"]) == {"localhost"}  # web9.invalid is not this host
    for key in ("playbooks", "run.inventory"):
        make_imds(tags={"pullboot:role": "web", f"pullboot:{key}": "site.yml"})
        refused = run_cli("run", "--source", repo.url, "--json")
        assert refused.rc == 2, refused.stderr
        assert f"setting '{key}' from imds-tag:pullboot:{key} is refused" in refused.stderr
