"""The trust policy, attacked through the CLI: a real git repo, the IMDS fake, moto.

Each attack from issue 11 (and the other members of its class found since) must be
refused with an error that names the key, its origin and the config line that would
allow it; nothing is executed and nothing is fetched or shipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli, web_tree

INJECT = "{{{{ lookup('pipe', 'touch {marker}') }}}}"

ECHO_PLAY = """\
- name: echo
  hosts: all
  gather_facts: false
  tasks:
    - name: use the launch parameter and a tag
      ansible.builtin.copy:
        dest: "{{ out_dir }}/echo.txt"
        content: "{{ greeting }}|{{ pullboot.tags['Name'] }}\\n"
        mode: "0644"
"""


def _config(tmp_path: Path, doc: dict[str, Any]) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(doc))


def _nothing_fetched(state: Path) -> bool:
    cache = state / "cache"
    return not cache.exists() or not any(cache.rglob("*"))


def test_ref_tag_cannot_reach_git_options(make_repo: Any, make_imds: Any, tmp_path: Path,
                                          state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    make_imds(tags={"pullboot:role": "web",
                    "pullboot:ref": f"--upload-pack=touch {marker}; git-upload-pack"})
    repo = make_repo(web_tree())
    for command in ("run", "plan"):
        res = run_cli(command, "--source", repo.url)
        assert res.rc == 2, res.stderr
        assert "'ref'" in res.stderr and "imds-tag:pullboot:ref" in res.stderr
        assert not marker.exists()
        assert _nothing_fetched(state_dir)


def test_ref_from_a_tag_the_policy_allows_is_still_only_a_ref(
        make_repo: Any, make_imds: Any, tmp_path: Path, state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    _config(tmp_path, {"trust": {"tags": ["ref"]}})
    make_imds(tags={"pullboot:role": "web", "pullboot:ref": f"--upload-pack=touch {marker}"})
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 2, res.stderr
    assert "starts with '-'" in res.stderr and "fix: use a branch, tag or commit sha" in (
        res.stderr.replace("pullboot: fix:", "fix:"))
    assert not marker.exists() and _nothing_fetched(state_dir)


@pytest.mark.parametrize("ref", ["--upload-pack=touch {m}", "-c", "main..x", "a b", "x:y"])
def test_plan_ref_from_the_command_line_is_validated(ref: str, make_repo: Any, tmp_path: Path,
                                                     state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    res = run_cli("plan", "--role", "web", "--source", make_repo(web_tree()).url,
                  f"--ref={ref.format(m=marker)}")
    assert res.rc == 2, res.stderr
    assert "is not a git branch, tag or commit sha" in res.stderr
    assert "Traceback" not in res.stderr
    assert not marker.exists() and _nothing_fetched(state_dir)


@pytest.mark.parametrize("url", ["-oProxyCommand=touch {m}", "git+ext::sh -c touch% {m}",
                                 "ext::sh -c touch% {m}.git", "git+fd::17"])
def test_source_url_is_never_an_option_or_a_command(url: str, tmp_path: Path,
                                                    state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    res = run_cli("run", "--role", "web", "--source", url.format(m=marker))
    assert res.rc == 2, res.stderr
    assert "source" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists() and _nothing_fetched(state_dir)


@pytest.mark.parametrize("name", ["ansible_connection", "ansible_ssh_common_args",
                                  "ansible_become_exe", "hostvars", "pullboot"])
def test_connection_vars_from_tags_are_refused(name: str, make_repo: Any, make_imds: Any,
                                               tmp_path: Path, state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    make_imds(tags={"pullboot:role": "web", "pullboot:var:ansible_connection": "ssh",
                    f"pullboot:var:{name}": f"-o ProxyCommand=touch {marker}"})
    res = run_cli("run", "--source", make_repo(web_tree()).url, "--json")
    assert res.rc == 2, res.stderr
    assert "is an Ansible connection, magic or reserved variable" in res.stderr
    assert "trust: {tag_vars: [" in res.stderr
    assert res.report["error"]["type"] == "TrustError"
    assert not marker.exists() and _nothing_fetched(state_dir)


def test_connection_vars_from_user_data_are_refused(make_repo: Any, make_imds: Any,
                                                    tmp_path: Path) -> None:
    user_data = b"#cloud-config\npullboot:\n  role: web\n  vars: {ansible_user: nobody}\n"
    make_imds(user_data=user_data)
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 2
    assert "'ansible_user' from user-data is refused" in res.stderr
    assert "trust: {user_data_vars: [ansible_user]}" in res.stderr


def test_reserved_var_allowed_by_name_reaches_the_play(make_repo: Any, make_imds: Any,
                                                       tmp_path: Path, out_dir: Path) -> None:
    _config(tmp_path, {"trust": {"tag_vars": ["ansible_check_mode_note"]}})
    make_imds(tags={"pullboot:role": "web", "pullboot:var:ansible_check_mode_note": "x"})
    res = run_cli("run", "--source", make_repo(web_tree()).url, "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    assert res.report["vars"]["ansible_check_mode_note"] == (
        "imds-tag:pullboot:var:ansible_check_mode_note")


def test_results_destination_from_a_tag_is_refused(aws: Any, make_repo: Any, make_imds: Any,
                                                   state_dir: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="attacker", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    make_imds(tags={"pullboot:role": "web", "pullboot:results.s3": "s3://attacker/loot"})
    res = run_cli("run", "--source", make_repo(web_tree()).url, "--json")
    assert res.rc == 2, res.stderr
    assert "'results.s3' from imds-tag:pullboot:results.s3 is refused" in res.stderr
    assert "trust: {tags: [results.s3]}" in res.stderr
    assert s3.list_objects_v2(Bucket="attacker").get("KeyCount", 0) == 0
    assert _nothing_fetched(state_dir)


def test_hostname_from_imds_never_names_a_playbook_outside_the_tree(
        make_repo: Any, make_imds: Any, tmp_path: Path, state_dir: Path) -> None:
    marker = tmp_path / "pwned"
    # releases/<id>/../../x/pb.yml is state/x/pb.yml: outside the fetched tree.
    evil = state_dir / "x" / "pb.yml"
    evil.parent.mkdir(parents=True)
    evil.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n"
                    f"    - ansible.builtin.file: {{path: {marker}, state: touch}}\n")
    make_imds(hostname="../../x/pb", tags={"Name": "no-role"})
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 3, res.stderr
    assert "no role for this instance" in res.stderr
    assert not marker.exists()


def test_a_real_hostname_still_selects_its_fallback_playbook(
        make_repo: Any, make_imds: Any, out_dir: Path) -> None:
    play = (f"- hosts: all\n  gather_facts: false\n  tasks:\n"
            f"    - ansible.builtin.file: {{path: {out_dir}/by-host, state: touch}}\n")
    make_imds(hostname="ip-10-0-0-7.eu-west-1.compute.internal", tags={"Name": "x"})
    res = run_cli("run", "--source", make_repo({"ip-10-0-0-7.yml": play}).url)
    assert res.rc == 0, res.stderr
    assert (out_dir / "by-host").exists()


@pytest.mark.parametrize("origin", ["tag", "user-data"])
def test_launch_parameters_are_data_never_templates(origin: str, make_repo: Any,
                                                    make_imds: Any, tmp_path: Path,
                                                    out_dir: Path) -> None:
    marker = tmp_path / "pwned"
    payload = INJECT.format(marker=marker)
    tags = {"pullboot:role": "echo", "Name": payload}
    user_data = None
    if origin == "tag":
        tags["pullboot:var:greeting"] = payload
    else:
        user_data = ("#cloud-config\n" + yaml.safe_dump(
            {"pullboot": {"vars": {"greeting": payload}}})).encode()
    make_imds(tags=tags, user_data=user_data)
    res = run_cli("run", "--source", make_repo({"playbooks/echo.yml": ECHO_PLAY}).url,
                  "-e", f"out_dir={out_dir}")
    assert res.rc == 0, res.stderr
    assert not marker.exists()
    assert (out_dir / "echo.txt").read_text() == f"{payload}|{payload}\n"


def test_host_vars_are_still_templated(make_repo: Any, out_dir: Path) -> None:
    # -e and the config file belong to the host: ansible may template them, as ansible-pull's -e.
    res = run_cli("run", "--role", "echo", "--source",
                  make_repo({"playbooks/echo.yml": ECHO_PLAY.replace(
                      "{{ pullboot.tags['Name'] }}", "x")}).url,
                  "-e", f"out_dir={out_dir}", "-e", "greeting={{ 6 * 7 }}")
    assert res.rc == 0, res.stderr
    assert (out_dir / "echo.txt").read_text() == "42|x\n"


def test_signals_tags_tag_is_refused_by_plan_and_run_alike(aws: Any, make_repo: Any,
                                                            make_imds: Any) -> None:
    make_imds(tags={"pullboot:role": "web", "pullboot:signals.tags": "true"})
    repo = make_repo(web_tree())
    for command in ("plan", "run"):
        res = run_cli(command, "--source", repo.url, "--json")
        assert res.rc == 2, (command, res.stderr)
        assert "'signals.tags' from imds-tag:pullboot:signals.tags is refused" in res.stderr


def test_signals_tags_tag_allowed_by_the_policy_is_what_plan_shows_and_run_uses(
        aws: Any, make_repo: Any, make_imds: Any, tmp_path: Path, out_dir: Path) -> None:
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"]
    _config(tmp_path, {"trust": {"tags": ["signals.tags"]}})
    make_imds(instance_id=instance, tags={"pullboot:role": "web",
                                          "pullboot:signals.tags": "true"})
    repo = make_repo(web_tree())
    plan = run_cli("plan", "--source", repo.url, "--json")
    assert plan.rc == 0, plan.stderr
    shown = json.loads(plan.stdout)["settings"]["signals.tags"]
    assert shown == {"value": True, "origin": "imds-tag:pullboot:signals.tags"}
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["settings"]["signals.tags"] == shown
    assert [s["kind"] for s in res.report["signals"]] == ["tags"]
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"]
    assert {"Key": "pullboot:status", "Value": "successful"} in [
        {"Key": t["Key"], "Value": t["Value"]} for t in tags]


def test_host_only_narrows_what_user_data_may_set(make_repo: Any, make_imds: Any,
                                                  tmp_path: Path) -> None:
    repo = make_repo(web_tree())
    _config(tmp_path, {"source": repo.url, "trust": {"host_only": ["source"]}})
    make_imds(user_data=b"#cloud-config\npullboot: {role: web, source: /elsewhere}\n")
    res = run_cli("run")
    assert res.rc == 2
    assert "'source' from user-data is refused" in res.stderr
    assert "trust.host_only" in res.stderr


def test_verification_cannot_be_turned_off_by_user_data(make_repo: Any, make_imds: Any,
                                                        tmp_path: Path) -> None:
    _config(tmp_path, {"git": {"verify_commit": True, "allowed_signers": ["ABCD"]}})
    make_imds(user_data=b"#cloud-config\npullboot:\n  role: web\n  git: {verify_commit: false}\n")
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 2
    assert "'git.verify_commit' from user-data is refused" in res.stderr
    assert "trust: {user_data: [git.verify_commit]}" in res.stderr


def test_early_settings_cannot_come_from_user_data(make_repo: Any, make_imds: Any) -> None:
    make_imds(user_data=b"#cloud-config\npullboot: {role: web, state_dir: /etc}\n")
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 2
    assert "'state_dir' from user-data is refused: it is read before user-data" in res.stderr


def test_policy_table_in_plan_and_config(make_repo: Any) -> None:
    res = run_cli("config")
    assert res.rc == 0
    assert "source" in res.stdout and "user-data" in res.stdout
    rows = json.loads(run_cli("config", "--json").stdout)
    by_key = {r["key"]: r for r in rows}
    assert by_key["roles"]["settable_by"] == ["cli", "env", "config", "user-data", "tag"]
    assert by_key["source"]["settable_by"] == ["cli", "env", "config", "user-data"]
    assert by_key["git.verify_commit"]["settable_by"] == ["cli", "env", "config"]
    plan = run_cli("plan", "--role", "web", "--source", make_repo(web_tree()).url, "--json")
    trust = json.loads(plan.stdout)["trust"]
    assert trust["tags"] == ["roles", "vars"]
    assert "source" in trust["user_data"]


# -- red-team findings (the same classes, found after the first fix) ------------------------

SET_PAYLOAD = ("#cloud-config\npullboot:\n  role: echo\n  vars:\n    greeting: !!set "
               "{{\"{{{{ lookup('pipe', 'touch {marker}') }}}}\": null}}\n")


def test_a_yaml_set_in_user_data_vars_is_refused_not_run(make_repo: Any, make_imds: Any,
                                                         tmp_path: Path, out_dir: Path) -> None:
    # A !!set is a Python type the !unsafe walk once missed: the template in it ran as root.
    marker = tmp_path / "pwned"
    make_imds(user_data=SET_PAYLOAD.format(marker=marker).encode())
    res = run_cli("run", "--source", make_repo({"playbooks/echo.yml": ECHO_PLAY}).url,
                  "-e", f"out_dir={out_dir}")
    # The data-only loader refuses the tag; such user-data is not used at all.
    assert res.rc == 3, res.stderr
    assert "user-data" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


@pytest.mark.parametrize("value", ["1.10", "0644", "no", "", "=", "<<", "2001-01-01", "~"])
def test_tag_values_reach_the_play_as_the_exact_strings(value: str, make_repo: Any,
                                                         make_imds: Any, out_dir: Path) -> None:
    # YAML would re-type an !unsafe scalar (1.10 -> 1.1, no -> False) or fail on '=':
    # the vars travel as ansible's JSON with __ansible_unsafe instead.
    play = ECHO_PLAY.replace("{{ greeting }}", "{{ greeting }}:{{ greeting | type_debug }}")
    make_imds(tags={"pullboot:role": "echo", "pullboot:var:greeting": value, "Name": value})
    res = run_cli("run", "--source", make_repo({"playbooks/echo.yml": play}).url,
                  "-e", f"out_dir={out_dir}")
    assert res.rc == 0, res.stderr
    shown = (out_dir / "echo.txt").read_text()
    assert shown.startswith(f"{value}:"), shown
    assert shown.endswith(f"|{value}\n"), shown
    assert "str" in shown.split("|")[0] or "Unsafe" in shown.split("|")[0]


def test_the_extra_vars_file_does_not_outlive_the_run(make_repo: Any, make_imds: Any,
                                                      state_dir: Path, out_dir: Path) -> None:
    make_imds(tags={"pullboot:role": "web", "pullboot:var:note": "launch-secret-ish"})
    res = run_cli("run", "--source", make_repo(web_tree()).url, "-e", f"out_dir={out_dir}")
    assert res.rc == 0, res.stderr
    assert not list(state_dir.rglob("pullboot-extravars*"))


@pytest.mark.parametrize("name", ["lookup", "query", "range", "db_password"])
def test_tags_cannot_shadow_template_globals_or_the_hosts_secrets(
        name: str, make_repo: Any, make_imds: Any, tmp_path: Path) -> None:
    _config(tmp_path, {"secret_vars": {"db_password": "ssm:/prod/db"}})
    make_imds(tags={"pullboot:role": "web", f"pullboot:var:{name}": "attacker-known"})
    res = run_cli("run", "--source", make_repo(web_tree()).url)
    assert res.rc == 2, res.stderr
    assert f"launch parameter {name!r}" in res.stderr and "refused" in res.stderr


def test_user_data_cannot_choose_a_directory_source(make_imds: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "local.yml").write_text(
        f"- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.file: {{path: {marker}, state: touch}}\n")
    make_imds(user_data=f"#cloud-config\npullboot: {{source: {evil}}}\n".encode())
    res = run_cli("run")
    assert res.rc == 2, res.stderr
    assert "is a directory on this host, and only the host may choose one" in res.stderr
    assert not marker.exists()


def test_user_data_cannot_switch_to_an_unverified_source_kind(
        make_repo: Any, make_imds: Any, tmp_path: Path) -> None:
    # The host verifies S3 bundles; a git source from user-data would run unverified code.
    _config(tmp_path, {"s3": {"require_signature": True, "signature_keys": ["AAAA"]}})
    repo = make_repo(web_tree())
    make_imds(user_data=f"#cloud-config\npullboot: {{role: web, source: {repo.url}}}\n"
              .encode())
    res = run_cli("run")
    assert res.rc == 2, res.stderr
    assert "is a git source, but this host verifies only s3 sources" in res.stderr


def test_host_git_token_never_goes_to_a_server_user_data_chose(
        make_repo: Any, make_imds: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from tests.fakes.githttp import GitHttpServer

    token = "host-token-0d4f1e77"
    monkeypatch.setenv("HOST_GIT_TOKEN", token)
    repo = make_repo(web_tree())
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(served / "b.git")],
                   check=True)
    _config(tmp_path, {"git": {"token": "env:HOST_GIT_TOKEN"}})
    with GitHttpServer(served, token=token) as server:
        make_imds(user_data=(f"#cloud-config\npullboot: {{role: web, source: "
                             f"git+{server.url}/b.git}}\n").encode())
        res = run_cli("run", "--json")
        assert res.rc != 0
        assert "git credentials not sent" in res.stderr
        assert not any(token in h for h in server.auth_headers)
        # The host may name the servers its credentials may go to.
        _config(tmp_path, {"git": {"token": "env:HOST_GIT_TOKEN",
                                   "credential_hosts": ["127.0.0.1"]}})
        res = run_cli("run", "--json", "-e", f"out_dir={tmp_path}")
        assert res.rc == 0, res.stderr


def test_credentials_in_a_source_url_are_never_logged_or_reported(make_repo: Any,
                                                                   state_dir: Path) -> None:
    # The URL does not resolve to a server: what matters is what is shown of it.
    url = "git+https://bot:tok3n-c4nary-never-shown@git.invalid/ops/boot.git"
    for command in ("plan", "run"):
        res = run_cli(command, "--role", "web", "--source", url, "--json",
                      env={"PULLBOOT_FETCH_RETRY_BUDGET": "5"})
        assert "tok3n-c4nary-never-shown" not in res.stdout + res.stderr, command
    leaked = [p for p in state_dir.rglob("*") if p.is_file()
              and b"tok3n-c4nary-never-shown" in p.read_bytes()]
    assert leaked == []


def test_a_password_in_the_url_still_authenticates_but_never_reaches_disk(
        make_repo: Any, tmp_path: Path, state_dir: Path, out_dir: Path) -> None:
    from tests.fakes.githttp import GitHttpServer

    token = "url-pass-5b2e90c1"
    repo = make_repo(web_tree())
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(served / "b.git")],
                   check=True)
    with GitHttpServer(served, token=token) as server:
        url = server.url.replace("http://", f"git+http://bot:{token}@") + "/b.git"
        res = run_cli("run", "--role", "web", "--source", url, "-e", f"out_dir={out_dir}")
        assert res.rc == 0, res.stderr
        assert server.auth_headers and server.unauthorized == 0
    assert token not in res.stdout + res.stderr
    assert [p for p in state_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()
            ] == []
