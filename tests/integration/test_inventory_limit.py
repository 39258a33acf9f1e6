"""ansible-pull's inventory and limit rules: this host only, the tree's choices, loud skips.

Every test goes through the CLI with a real ansible-playbook. Hosts the
tree's inventory lists that are not this machine have unreachable names
(``.invalid``): before the default limit they were targets, and failed.
"""

from __future__ import annotations

import socket
from typing import Any

from tests.conftest import run_cli

ALL_PLAY = """\
- name: everyone
  hosts: all
  gather_facts: false
  tasks:
    - name: hello
      ansible.builtin.debug:
        msg: hello
"""
GROUP_PLAY = """\
- name: webs
  hosts: webservers
  gather_facts: false
  tasks:
    - name: hello
      ansible.builtin.debug:
        msg: hello
"""
OTHERS = "[webservers]\ndb1.invalid\nweb9.invalid\n[db]\ndb2.invalid\n"


def _mine() -> str:
    """An inventory whose webservers group holds this host (by name) and strangers."""
    return f"[webservers]\n{socket.gethostname()}\nweb9.invalid\n"


def test_default_limit_is_this_host(make_repo: Any) -> None:
    repo = make_repo({"local.yml": ALL_PLAY, "inventory/hosts.ini": OTHERS})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert set(res.report["stats"]) == {"localhost"}
    limit = res.report["options"]["limit"].split(",")
    assert limit[0] == "localhost" and limit[-1] == "127.0.0.1"
    assert socket.gethostname().split(".")[0] in limit


def test_run_limit_still_overrides_the_default(make_repo: Any) -> None:
    repo = make_repo({"local.yml": ALL_PLAY, "inventory/hosts.ini": OTHERS})
    # -c local, like ansible-pull: a named host runs here, never over SSH.
    res = run_cli("run", "--source", repo.url, "--limit", "localhost,db1.invalid", "--json")
    assert res.rc == 0, res.stderr
    assert set(res.report["stats"]) == {"localhost", "db1.invalid"}
    assert res.report["options"]["limit"] == "localhost,db1.invalid"


def test_hosts_file_at_the_tree_root_is_the_inventory(make_repo: Any) -> None:
    repo = make_repo({"local.yml": GROUP_PLAY, "hosts.ini": _mine()})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert set(res.report["stats"]) == {socket.gethostname()}
    assert res.report["stats"][socket.gethostname()]["ok"] == 1
    assert res.report["warnings"] == []


def test_ansible_cfg_inventory_wins_over_the_tree_defaults(make_repo: Any) -> None:
    repo = make_repo({"local.yml": GROUP_PLAY, "ansible.cfg": "[defaults]\ninventory = env/prod\n",
                      "env/prod": _mine(), "inventory/hosts.ini": OTHERS})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert set(res.report["stats"]) == {socket.gethostname()}
    plan = run_cli("plan", "--source", repo.url)
    assert "inventory  localhost, env/prod (the tree's ansible.cfg)" in plan.stdout, plan.stdout


def test_dash_i_wins_over_ansible_cfg_and_takes_host_lists(make_repo: Any) -> None:
    repo = make_repo({"local.yml": GROUP_PLAY, "ansible.cfg": "[defaults]\ninventory = nope\n",
                      "other.ini": _mine()})
    res = run_cli("run", "--source", repo.url, "-i", "other.ini", "--json")
    assert res.rc == 0, res.stderr
    assert set(res.report["stats"]) == {socket.gethostname()}
    listed = run_cli("run", "--source", repo.url, "-i", "localhost,", "--limit", "all",
                     "--playbook", "local.yml", "--json")
    assert listed.rc == 0, listed.stderr  # no webservers in a host list: a loud skip
    assert any("matched no hosts" in w for w in listed.report["warnings"])


def test_a_play_that_matches_no_host_is_a_warning_not_a_silent_success(make_repo: Any) -> None:
    repo = make_repo({"local.yml": GROUP_PLAY + ALL_PLAY.replace("everyone", "rest")})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert res.report["warnings"] == [
        "play 'webs' matched no hosts (hosts: webservers) and was skipped: check the "
        "inventory (-i / run.inventory) and the limit (run.limit; default: this host)"]
    assert "play 'webs' matched no hosts" in res.stderr  # the log (journal) line
    text = run_cli("run", "--source", repo.url)
    assert "  warning    play 'webs' matched no hosts" in text.stdout


def test_named_inventory_must_be_inside_the_tree(make_repo: Any, tmp_path: Any) -> None:
    outside = tmp_path / "outside.ini"
    outside.write_text(_mine())
    repo = make_repo({"local.yml": GROUP_PLAY})
    (repo.path / "link.ini").symlink_to(outside)
    repo.commit({}, "link out")
    for name, rc, words in (("missing.ini", 4, "inventory missing.ini not found"),
                            ("link.ini", 4, "inventory link.ini not found"),
                            ("../outside.ini", 2, "holds '..'"),
                            (str(outside), 2, "not relative to the fetched tree"),
                            ("-ihack", 2, "starts with '-'"),
                            ("a,$(x),", 2, "not a host name")):
        res = run_cli("run", "--source", repo.url, f"--inventory={name}", "--json")
        assert res.rc == rc, (name, res.stderr)
        assert words in res.stderr, (name, res.stderr)
