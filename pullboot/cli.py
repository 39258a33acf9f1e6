"""Command line: parse argv, set up logging, call the core, render, exit.

This is the only module that touches argv, stdout/stderr rendering, signal
handlers and exit codes. Everything else returns data or raises
PullbootError.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from pullboot import __version__, config
from pullboot import status as status_file
from pullboot.errors import (
    EXIT_CANCELED,
    EXIT_PLAY_FAILED,
    ConfigError,
    PullbootError,
    exit_code_table,
)
from pullboot.extravars import parse_extra_vars
from pullboot.trust import OriginKind, Policy

log = logging.getLogger("pullboot")

# Generated from errors.py: the one table of what each exit code means.
EXIT_CODES = "exit codes:\n" + "".join(
    f"  {code:<3} {meaning}\n" for code, meaning, _ in exit_code_table())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pullboot`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except PullbootError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullboot", description="Turn a plain machine image into any server at boot.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pullboot {__version__}")
    parser.set_defaults(verbose=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    _add_common(common)
    run = sub.add_parser("run", parents=[common], help="the boot job: resolve, fetch, run, report",
                         epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    _add_pull_parser(sub)
    plan = sub.add_parser("plan", parents=[common], help="show what a run would do; run nothing",
                          epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan.set_defaults(func=cmd_plan)
    cfg = sub.add_parser("config", help="list every setting, or check a config file",
                         epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_argument("--check", metavar="FILE", help="validate FILE and exit 0 or 2")
    cfg.add_argument("--json", action="store_true", help="print JSON")
    cfg.add_argument("-v", "--verbose", action="count", default=0)
    cfg.set_defaults(func=cmd_config)
    status = sub.add_parser("status", help="the last runs recorded in the state dir; --wait "
                            "blocks until the boot run is done",
                            epilog=EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("--state-dir", metavar="DIR", help="default: $PULLBOOT_STATE_DIR or "
                        "/var/lib/pullboot")
    status.add_argument("--config", metavar="FILE", help="config file (for state_dir)")
    status.add_argument("-n", "--limit", type=int, default=20, help="runs to show (default 20)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--wait", action="store_true", help="block until this boot's run has "
                        "finished, then exit with its exit code (like cloud-init status --wait)")
    status.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="with --wait: give up after SECONDS (exit 5; default: no limit)")
    status.add_argument("-v", "--verbose", action="count", default=0)
    status.set_defaults(func=cmd_status)
    from pullboot.sim import cli as sim_cli  # argparse only; the simulator loads on use

    sim_cli.add_parser(sub).set_defaults(func=cmd_sim)
    return parser


def cmd_sim(args: argparse.Namespace) -> int:
    """``pullboot sim ...``: the instance simulator (its own CLI module renders)."""
    from pullboot.sim import cli as sim_cli

    return sim_cli.run(args)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help=f"config file (env PULLBOOT_CONFIG; default {config.DEFAULT_CONFIG}, "
                   "optional)")
    p.add_argument("--state-dir", metavar="DIR",
                   help=f"state dir (env PULLBOOT_STATE_DIR; default {config.DEFAULT_STATE_DIR})")
    p.add_argument("--source", metavar="URL", help="dir, git+https://..., s3://bucket/key")
    p.add_argument("--ref", metavar="REF", help="git branch, tag or commit sha")
    p.add_argument("--role", metavar="NAME", action="append", dest="roles",
                   help="role to run (repeatable; or comma-separated)")
    p.add_argument("-i", "--inventory", action="append", metavar="PATH|HOSTS,", dest="inventory",
                   help="inventory in the tree (repeatable; like ansible-pull -i; default: the "
                   "tree's ansible.cfg inventory, else inventory/, else hosts[.ini])")
    p.add_argument("--playbook", action="append", metavar="PATH", dest="playbook_opts",
                   default=[], help="playbook in the tree to run (repeatable; same as the "
                   "positional PLAYBOOK)")
    p.add_argument("playbooks", nargs="*", metavar="PLAYBOOK",
                   help="playbooks to run, relative to the tree (like ansible-pull's "
                   "playbook.yml); default: playbooks/<role>.yml, else the fallbacks")
    p.add_argument("-e", "--extra-vars", metavar="'K=V K2=V2'|@FILE|JSON", action="append",
                   default=[], help="extra vars for the play, as ansible-playbook -e reads "
                   "them (repeatable)")
    p.add_argument("--vault-password-file", metavar="FILE", dest="vault_password_file",
                   help="ansible-vault password file on this host (vault_password_file)")
    p.add_argument("--vault-id", metavar="[LABEL@]FILE", action="append", dest="vault_ids",
                   help="ansible-vault identity and its password file (repeatable; vault_ids)")
    p.add_argument("--wait-lock", type=float, metavar="SECONDS", dest="wait_lock",
                   help="wait up to SECONDS for another run's lock instead of exiting 75")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout "
                   "(logs go to stderr)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv also makes ansible verbose)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", default=None, help="ansible check mode")
    p.add_argument("--diff", action="store_true", default=None, help="ansible diff mode")
    p.add_argument("--tags", action="append", metavar="TAGS", help="only tasks with these tags")
    p.add_argument("--skip-tags", action="append", metavar="TAGS", help="skip these tags")
    p.add_argument("--limit", metavar="PATTERN", help="limit the play to these hosts")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="job timeout (0: none)")
    p.add_argument("--splay", type=float, metavar="SECONDS", help="random delay before "
                   "fetching (not on the first run on an instance unless splay_first_boot)")
    p.add_argument("--splay-stable", action="store_true", default=None, dest="splay_stable",
                   help="derive the splay from the instance id (same delay every run)")
    p.add_argument("--only-if-changed", action="store_true", default=None,
                   help="skip the run (status unchanged, exit 0) when the source revision, "
                   "roles, vars and options equal the last successful run's")


# -- pullboot pull: ansible-pull's command line ---------------------------------
#
# The options of ansible-core 2.19's lib/ansible/cli/pull.py, names and short
# forms as there (-C is --checkout, not --check). Each maps onto a pullboot
# setting in _pull_settings; what pullboot cannot honour is a warning (in the
# log and the report) or, where ignoring it would change what runs, an error.

# Options ansible-pull accepts but never passes on to ansible-playbook (pull.py
# hardcodes "-c local"): ignored by both, with a warning here.
_PULL_IGNORED_BY_ANSIBLE: Final = (
    ("remote_user", "-u/--user"), ("connection", "-c/--connection"),
    ("conn_timeout", "-T/--timeout"), ("ssh_common_args", "--ssh-common-args"),
    ("sftp_extra_args", "--sftp-extra-args"), ("scp_extra_args", "--scp-extra-args"),
    ("ssh_extra_args", "--ssh-extra-args"), ("list_hosts", "--list-hosts"),
    ("module_path", "-M/--module-path"),
)
# Prompts: nobody is there to type at boot or from a timer.
_PULL_PROMPTS: Final = (("ask_pass", "-k/--ask-pass"),
                        ("ask_vault_pass", "-J/--ask-vault-password"),
                        ("ask_become_pass", "-K/--ask-become-pass"))
_PULL_REPO_MODULES: Final = ("git", "subversion", "hg", "bzr")  # ansible-pull's REPO_CHOICES
_SCP_LIKE: Final = re.compile(r"^[\w.-]+@[\w.-]+:")
_HOST_COLON: Final = re.compile(r"^[\w.-]+:")


def _add_pull_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pull", help="run like ansible-pull: takes its arguments (-U URL -C REF ... "
        "[playbook.yml])", epilog="pullboot pull takes ansible-pull's options and maps them "
        "onto pullboot's settings; docs/migrating-from-ansible-pull.md has the table.\n\n"
        + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("-U", "--url", dest="url", help="repository URL (plain https://, ssh://, "
        "user@host:path, git://, file:// or a path: git)")
    add("-C", "--checkout", dest="ref", metavar="REF", help="branch, tag or commit (ref)")
    add("-d", "--directory", dest="dest", metavar="DIR", help="pullboot's state dir "
        "(releases, runs, lock; the tree in use is DIR/current)")
    add("-i", "--inventory", "--inventory-file", dest="inventory", action="append",
        metavar="INVENTORY", help="inventory in the tree, or a host list 'a,b,' "
        "(run.inventory)")
    add("-e", "--extra-vars", dest="extra_vars", action="append", default=[],
        metavar="VARS", help="extra vars, as ansible-playbook -e reads them")
    add("-o", "--only-if-changed", dest="only_if_changed", action="store_true", default=None,
        help="skip when nothing changed since the last successful run")
    add("-s", "--sleep", dest="sleep", metavar="N", help="random delay in [0, N) seconds "
        "before the fetch, every run (splay)")
    add("-f", "--force", action="store_true", help="run the last good release when the "
        "source cannot be fetched (on_source_failure: last-good)")
    add("--full", dest="full", action="store_true", help="full clone (git.full)")
    add("--purge", action="store_true", help="ignored: the release is kept as the last good")
    add("--clean", action="store_true", help="accepted: pullboot always runs the commit as "
        "fetched")
    add("--check", action="store_true", default=None, help="ansible check mode")
    add("--diff", action="store_true", default=None, help="ansible diff mode")
    add("-t", "--tags", dest="tags", action="append", metavar="TAGS")
    add("--skip-tags", dest="skip_tags", action="append", metavar="TAGS")
    add("-l", "--limit", dest="limit", metavar="PATTERN", help="default: this host")
    add("--vault-password-file", "--vault-pass-file", dest="vault_password_files",
        action="append", default=[], metavar="FILE")
    add("--vault-id", dest="vault_ids", action="append", metavar="[LABEL@]FILE")
    add("--accept-host-key", dest="accept_host_key", action="store_true",
        help="trust an unknown SSH host key on first use (git.accept_new_host_key)")
    add("--private-key", "--key-file", dest="private_key", metavar="FILE",
        help="SSH deploy key for the repository (git.ssh_key)")
    add("--verify-commit", dest="verify_commit", action="store_true",
        help="refuse commits not signed by git.allowed_signers")
    add("--track-subs", dest="track_subs", action="store_true",
        help="check submodules out (at the recorded commits)")
    add("-m", "--module-name", dest="module_name", default="git", metavar="NAME",
        help="repository module: only git")
    add("--flush-cache", dest="flush_cache", action="store_true",
        help="accepted: facts are never cached across runs")
    _add_pull_unhonoured(p)
    add("-v", "--verbose", dest="ansible_verbosity", action="count", default=0,
        help="ansible verbosity, as with ansible-pull (-vvv)")
    add("playbooks", nargs="*", metavar="playbook.yml", help="playbooks in the tree; "
        "default: <fqdn>.yml, <hostname>.yml, local.yml")
    # pullboot's own, for scripts and tests:
    add("--json", action="store_true", help="print the report as JSON on stdout")
    add("--config", metavar="FILE", help="pullboot config file")
    p.set_defaults(func=cmd_pull, roles=None, verbose=0, vault_password_file=None)


def _add_pull_unhonoured(p: argparse.ArgumentParser) -> None:
    """ansible-pull options pullboot does not honour: parsed, so that its command line works.

    _pull_settings warns about each (or refuses it, for the prompts).
    """
    add = p.add_argument
    add("--become-password-file", "--become-pass-file", dest="become_password_file",
        metavar="FILE", help="ignored (a warning): the play runs as this user, locally")
    add("--connection-password-file", "--conn-pass-file", dest="connection_password_file",
        metavar="FILE", help="ignored (a warning): every host uses the local connection")
    valued: list[tuple[tuple[str, ...], str]] = [
        (("-u", "--user"), "remote_user"), (("-c", "--connection"), "connection"),
        (("-T", "--timeout"), "conn_timeout"), (("--ssh-common-args",), "ssh_common_args"),
        (("--sftp-extra-args",), "sftp_extra_args"), (("--scp-extra-args",), "scp_extra_args"),
        (("--ssh-extra-args",), "ssh_extra_args"), (("-M", "--module-path"), "module_path")]
    for flags, dest in valued:
        add(*flags, dest=dest, help=argparse.SUPPRESS)
    switches: list[tuple[tuple[str, ...], str]] = [
        (("--list-hosts",), "list_hosts"), (("-k", "--ask-pass"), "ask_pass"),
        (("-J", "--ask-vault-password", "--ask-vault-pass"), "ask_vault_pass"),
        (("-K", "--ask-become-pass"), "ask_become_pass")]
    for flags, dest in switches:
        add(*flags, dest=dest, action="store_true", help=argparse.SUPPRESS)


def cmd_pull(args: argparse.Namespace) -> int:
    """``pullboot pull``: ansible-pull's arguments, run as ``pullboot run`` would."""
    args.verbose = 1 if args.ansible_verbosity else 0
    _setup_logging(args.verbose)
    settings, warnings = _pull_settings(args)
    for warning in warnings:
        log.warning("%s", warning)
    req = _request(args, on_event=_live_printer(sys.stderr), settings=settings,
                   warnings=warnings)
    return _run_request(req, args.json)


def _pull_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """ansible-pull's options as settings (cli layer) and the warnings for what is not honoured.

    Raises ConfigError (exit 2) where ignoring an option would change what runs.
    """
    if not args.url:  # ansible-pull: "URL for repository not specified"
        raise ConfigError("no repository URL: -U/--url is required",
                          hint="pullboot pull -U https://git.example.com/ops/boot.git [...]")
    if args.module_name != "git":
        known = args.module_name in _PULL_REPO_MODULES
        raise ConfigError(f"-m {args.module_name}: pullboot fetches git repositories only"
                          + ("" if known else " (ansible-pull knows git, subversion, hg, bzr)"),
                          hint="drop -m, or publish the tree as an S3 bundle or a directory "
                          "and use pullboot run --source")
    for dest, flag in _PULL_PROMPTS:
        if getattr(args, dest):
            raise ConfigError(f"{flag}: pullboot never prompts (nobody is there to type at "
                              "boot or from a timer)",
                              hint="use --vault-password-file FILE or --vault-id LABEL@FILE")
    args.source = _pull_source(args.url)
    settings: dict[str, Any] = {}
    warnings: list[str] = []
    if args.dest:
        settings["state_dir"] = _pull_state_dir(args.dest)
    if args.sleep is not None:
        # ansible-pull sleeps before every checkout, the first included.
        settings.update({"splay": config.coerce("splay", args.sleep, where="-s/--sleep"),
                         "splay_first_boot": True})
    for flag, key in (("full", "git.full"), ("track_subs", "git.submodules"),
                      ("accept_host_key", "git.accept_new_host_key"),
                      ("verify_commit", "git.verify_commit")):
        if getattr(args, flag):
            settings[key] = True
    if args.force:
        settings["on_source_failure"] = "last-good"
    if args.private_key:
        settings["git.ssh_key"] = os.path.abspath(os.path.expanduser(args.private_key))
    # Absolute, as ansible's unfrack_path makes them (ansible-pull runs the play from -d).
    files = [os.path.abspath(os.path.expanduser(f)) for f in args.vault_password_files]
    if files:  # ansible: each file is a vault id with the default label
        args.vault_password_file = files[0]
        args.vault_ids = [*files[1:], *(args.vault_ids or [])]
    warnings += _pull_warnings(args)
    return settings, warnings


def _pull_warnings(args: argparse.Namespace) -> list[str]:
    found = [f"{flag} ignored: ansible-pull does not pass it to ansible-playbook either "
             "(every host runs with the local connection)"
             for dest, flag in _PULL_IGNORED_BY_ANSIBLE if getattr(args, dest)]
    if args.track_subs:
        found.append("--track-subs: submodules are checked out at the commits the repository "
                     "records, not at their branches' latest (a release is one commit)")
    if args.purge:
        found.append("--purge ignored: the release stays in the state dir as the last good "
                     "one (keep_releases bounds how many)")
    for dest, flag in (("become_password_file", "--become-password-file"),
                       ("connection_password_file", "--connection-password-file")):
        if getattr(args, dest):
            found.append(f"{flag} ignored: the play runs as this process's user with the local "
                         "connection")
    return found


def _pull_source(url: str) -> str:
    """An ansible-pull ``-U`` (what the git module clones) as a pullboot git source URL."""
    if url.startswith("-"):
        raise ConfigError(f"-U {url[:80]!r} starts with '-'", hint="give the repository URL")
    if url.startswith(("git+", "git://")) or _SCP_LIKE.match(url):
        return url
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("https", "http", "ssh", "file"):
        return f"git+{url}"
    if "://" in url or _HOST_COLON.match(url):
        raise ConfigError(f"-U {url[:80]!r}: not a git URL pullboot pull can fetch",
                          hint="use https://, ssh://, git://, file://, user@host:path or a "
                          "local path")
    return f"git+file://{os.path.abspath(os.path.expanduser(url))}"


def _pull_state_dir(dest: str) -> str:
    """``-d DIR`` as the state dir; an ansible-pull checkout there is refused, not mixed in."""
    path = Path(os.path.abspath(os.path.expanduser(dest)))
    if (path / ".git").exists() or path.is_file():
        raise ConfigError(f"-d {path}: holds an ansible-pull checkout (or is a file); pullboot "
                          "keeps its state dir (releases, runs, lock) there",
                          hint=f"remove the old checkout (rm -rf {path}) or point -d at a "
                          "new directory")
    return str(path)


# -- commands ----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    return _run_request(_request(args, on_event=_live_printer(sys.stderr)), args.json)


def _run_request(req: Any, as_json: bool) -> int:
    """Run ``req`` as the boot job and render its report (``run`` and ``pull``)."""
    from pullboot import boot

    restore = _install_signal_handlers(req.cancel)
    try:
        result = boot.run(req)
    finally:
        restore()
    report = result.report
    if report.error:  # errors also go to stderr, where logs and journald look
        sys.stderr.write(f"pullboot: error: {report.error['message']}\n")
        if report.error.get("hint"):
            sys.stderr.write(f"pullboot: fix: {report.error['hint']}\n")
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _render_report(report, result.report_path, sys.stdout)
    return report.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from pullboot import boot

    result = boot.plan(_request(args))
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    inst = result.instance
    out.write(f"instance   {inst.get('id') or '(not on EC2)'} "
              f"[{result.identity_from}] host {inst.get('hostname')}\n")
    for role in result.roles or [{"name": "(none: fallback playbook)", "origin": "-"}]:
        out.write(f"role       {role['name']}  <- {role['origin']}\n")
    src = result.source
    out.write(f"source     {src.url} ({src.kind}) ref {src.ref or '(default)'}\n")
    out.write(f"revision   {src.revision}\n")
    out.write(f"current    {result.current_release or '(none)'}\n")
    out.write(f"playbooks  {', '.join(result.playbooks)}\n")
    out.write(f"inventory  {', '.join(['localhost', *result.inventory])} "
              f"({result.inventory_from}); limit {result.limit}\n")
    for name, origin in result.vars.items():
        out.write(f"var        {name}  <- {origin}\n")
    for key, item in result.settings.items():
        if item["origin"] != "default":
            out.write(f"setting    {key} = {item['value']!r}  <- {item['origin']}\n")
    trust = result.trust
    out.write(f"trust      tags may set: {', '.join(trust['tags'])}"
              f"{'; reserved vars: ' + ', '.join(trust['tag_vars']) if trust['tag_vars'] else ''}"
              "\n           user-data may set the launch settings "
              "(pullboot config shows who may set each)\n")
    out.write(f"would run  {'yes' if result.would_run else 'no'}: {result.reason}\n")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.check:
        layer = config.load_file(Path(args.check), required=True)
        config.resolve([layer])  # a bad trust.* list is an error too
        sys.stdout.write(f"{args.check}: ok ({len(layer.values)} settings)\n")
        return 0
    policy = _host_policy(args)
    rows = [{"key": o.key, "type": o.kind if o.kind != "choice" else "|".join(o.choices),
             "default": o.default, "env": config.ENV_PREFIX + o.key.upper().replace(".", "_"),
             "settable_by": _settable_by(policy, o.key), "help": o.help}
            for o in config.SCHEMA]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max(len(r["key"]) for r in rows)
    types = max(len(r["type"]) for r in rows)
    for r in rows:
        sys.stdout.write(f"{r['key']:<{width}}  {r['type']:<{types}}  default {r['default']!r}"
                         f"  set by: {', '.join(r['settable_by'])}\n"
                         f"{'':<{width}}  {r['help']}\n")
    return 0


def _host_policy(args: argparse.Namespace) -> Policy:
    """The trust policy of this host's env and config file (the defaults if they are broken)."""
    try:
        return config.resolve([config.env_layer(), _config_layer(args)]).policy
    except ConfigError as exc:
        log.warning("showing the default trust policy: %s", exc.message)
        return config.policy_of({})


def _settable_by(policy: Policy, key: str) -> list[str]:
    kinds = [OriginKind.CLI, OriginKind.ENV, OriginKind.CONFIG, OriginKind.USER_DATA,
             OriginKind.TAG]
    return [k.value for k in kinds if policy.allowed(k, key)]


def cmd_status(args: argparse.Namespace) -> int:
    from pullboot.state import StateDir

    layers = [config.Layer("cli", {"state_dir": args.state_dir} if args.state_dir else {}),
              config.env_layer(), _config_layer(args)]
    settings = config.resolve(layers)
    if args.wait:
        return _wait_status(Path(settings.get("status_file")), args)
    state = StateDir(Path(settings.get("state_dir")))
    reports = [r for _, r in zip(range(max(args.limit, 1)), state.reports(), strict=False)]
    if args.json:
        json.dump(reports, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    if not reports:
        sys.stdout.write(f"no runs recorded under {state.runs}\n")
        return 0
    sys.stdout.write(_status_table(reports))
    error = reports[0].get("error")
    if isinstance(error, Mapping):  # the newest run's reason in full; the table cuts it
        sys.stdout.write(f"error of {reports[0].get('run_id')}: {error.get('message')}\n")
        if error.get("hint"):
            sys.stdout.write(f"fix: {error['hint']}\n")
    live = status_file.read(Path(settings.get("status_file")))
    if live and live.get("status") == status_file.RUNNING:
        sys.stdout.write(f"running now: {live.get('run_id') or '(starting)'} in phase "
                         f"{live.get('phase')} (PID {live.get('pid')})\n")
    return 0


def _wait_status(path: Path, args: argparse.Namespace) -> int:
    def waiting(reason: str) -> None:
        sys.stderr.write(f"pullboot: waiting: {reason}\n")
        sys.stderr.flush()

    got = status_file.wait(path, timeout=args.timeout, on_waiting=waiting)
    live = got.status or {}
    if got.outcome == "timeout":
        sys.stderr.write(f"pullboot: error: no finished run after {got.waited_s:.0f}s "
                         f"(status file {path})\n")
        return EXIT_CANCELED
    if got.outcome == "died":
        sys.stderr.write(f"pullboot: error: run {live.get('run_id')} (PID {live.get('pid')}) "
                         f"ended in phase {live.get('phase')} without finishing\n")
        return EXIT_PLAY_FAILED
    code = live.get("exit_code")
    if args.json:
        json.dump(live, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"status: {live.get('status')} (exit {code}) run {live.get('run_id')}"
                         f"{' report ' + str(live['report']) if live.get('report') else ''}\n")
        error = _report_error(live.get("report"))
        if error:
            sys.stdout.write(f"error: {error}\n")
    return code if isinstance(code, int) else EXIT_PLAY_FAILED


# -- helpers -----------------------------------------------------------------


def _request(args: argparse.Namespace, on_event: Any = None, *,
             settings: Mapping[str, Any] | None = None, warnings: Sequence[str] = ()) -> Any:
    """The Request of ``run``, ``plan`` and ``pull``: flags become cli-layer settings.

    ``settings`` adds dotted keys no shared flag carries (``pull``'s mapping);
    ``warnings`` go into the run's report.
    """
    from pullboot.model import Request

    cli: dict[str, Any] = dict(settings or {})
    for attr, key in (("state_dir", "state_dir"), ("source", "source"), ("ref", "ref"),
                      ("limit", "run.limit"), ("timeout", "run.timeout"),
                      ("check", "run.check"), ("diff", "run.diff"),
                      ("only_if_changed", "only_if_changed"),
                      ("wait_lock", "lock.wait"), ("splay", "splay"),
                      ("splay_stable", "splay_stable")):
        value = getattr(args, attr, None)
        if value is not None:
            cli[key] = value
    if getattr(args, "vault_password_file", None):
        cli["vault_password_file"] = args.vault_password_file
    if getattr(args, "vault_ids", None):
        cli["vault_ids"] = list(args.vault_ids)
    if args.roles:
        cli["roles"] = [r.strip() for item in args.roles for r in item.split(",")]
    if getattr(args, "inventory", None):
        cli["run.inventory"] = list(args.inventory)
    books = [*getattr(args, "playbook_opts", []), *getattr(args, "playbooks", [])]
    if books:
        cli["playbooks"] = books
    for attr, key in (("tags", "run.tags"), ("skip_tags", "run.skip_tags")):
        if getattr(args, attr, None):
            cli[key] = [t.strip() for item in getattr(args, attr) for t in item.split(",")]
    ansible_v = getattr(args, "ansible_verbosity", None)
    if ansible_v is None:
        ansible_v = args.verbose - 1 if args.verbose >= 2 else 0
    if ansible_v:
        cli["run.verbosity"] = min(ansible_v, 4)
    extra = parse_extra_vars(args.extra_vars)
    if extra:
        cli["vars"] = extra
    path, required = _config_path(args)
    return Request(cli=cli, config_path=path, config_required=required,
                   warnings=tuple(warnings), **({"on_event": on_event} if on_event else {}))


def _config_path(args: argparse.Namespace) -> tuple[Path, bool]:
    if getattr(args, "config", None):
        return Path(args.config), True
    if os.environ.get("PULLBOOT_CONFIG"):
        return Path(os.environ["PULLBOOT_CONFIG"]), True
    return config.DEFAULT_CONFIG, False


def _config_layer(args: argparse.Namespace) -> config.Layer:
    path, required = _config_path(args)
    return config.load_file(path, required=required)


def _install_signal_handlers(cancel: threading.Event) -> Any:
    def handler(signum: int, _frame: Any) -> None:
        log.warning("%s received: canceling the run", signal.Signals(signum).name)
        cancel.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _live_printer(stream: TextIO) -> Any:
    from pullboot.events import describe

    tty = stream.isatty()

    def show(event: Mapping[str, Any]) -> None:
        line = describe(event)
        if line is None:
            return
        status, text = line
        if tty or status in ("failed", "unreachable"):
            stream.write(f"{status:<11} {text}\n" if status != "play" else f"PLAY {text}\n")
            stream.flush()

    return show


def _render_report(report: Any, path: Path | None, out: TextIO) -> None:
    inst = report.instance
    out.write(f"pullboot run {report.run_id}: {report.status} (exit {report.exit_code}) "
              f"in {report.duration_s:.1f}s\n")
    if inst:
        out.write(f"  instance   {inst.get('id') or '(local)'} {inst.get('region') or ''} "
                  f"{inst.get('instance_type') or ''}\n".rstrip() + "\n")
    for role in report.roles:
        out.write(f"  role       {role['name']} (from {role['origin']})\n")
    src = report.source
    if src.url:
        stale = f"  STALE: {src.stale_reason}" if src.stale else ""
        out.write(f"  source     {src.url} ({src.kind}) @ {src.revision}{stale}\n")
    if report.playbooks:
        out.write(f"  playbooks  {', '.join(report.playbooks)}\n")
    if report.stats:
        totals = report.totals()
        out.write("  stats      " + " ".join(f"{k}={v}" for k, v in totals.items()) + "\n")
    for warning in report.warnings:
        out.write(f"  warning    {warning}\n")
    for failure in report.failures:
        out.write(f"  FAILED     {failure['task']} [{failure['host']}]: {failure['message']}\n")
    if report.error:
        out.write(f"  error      {report.error['message']}\n")
        if report.error.get("hint"):
            out.write(f"  fix        {report.error['hint']}\n")
    if path:
        out.write(f"  report     {path}\n")


def _status_table(reports: list[dict[str, Any]]) -> str:
    rows = [("RUN", "STATUS", "STARTED", "ROLES", "REVISION", "CHANGED", "FAILED",
             "DURATION", "REASON")]
    for r in reports:
        stats = r.get("stats") or {}
        changed = sum(h.get("changed", 0) for h in stats.values())
        failed = sum(h.get("failed", 0) + h.get("unreachable", 0) for h in stats.values())
        rev = str((r.get("source") or {}).get("revision") or "-")
        started = str(r.get("started_at") or "-").replace("T", " ").replace("+00:00", "Z")
        rows.append((str(r.get("run_id")), str(r.get("status")), started,
                     ",".join(x["name"] for x in r.get("roles") or []) or "-",
                     rev[:12], str(changed), str(failed), f"{r.get('duration_s', 0):.1f}s",
                     _reason(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                   + "\n" for row in rows)


def _report_error(path: Any) -> str | None:
    """The error message of the report at ``path`` (our own file), if it has one."""
    if not isinstance(path, str):
        return None
    from pullboot.atomic import read_json  # the one tolerant reader: no FIFO, no symlink

    report = read_json(Path(path), dict, what="run report", warn=False)
    error = (report or {}).get("error")
    return str(error.get("message")) if isinstance(error, Mapping) else None


def _reason(report: Mapping[str, Any], width: int = 80) -> str:
    """Why a run did not succeed, on one line: its error, else its first failed task."""
    error = report.get("error")
    failures = report.get("failures") or []
    if isinstance(error, Mapping):
        text = str(error.get("message") or "")
    elif failures and isinstance(failures[0], Mapping):
        text = f"{failures[0].get('task')}: {failures[0].get('message')}"
    else:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _print_error(exc: PullbootError) -> None:
    sys.stderr.write(f"pullboot: error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"pullboot: fix: {exc.hint}\n")


def _setup_logging(verbose: int) -> None:
    # Logs always go to stderr, so --json output on stdout stays clean.
    handler = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamps; a TTY user wants them short.
    handler.setFormatter(logging.Formatter("pullboot: %(levelname)s %(message)s"))
    root = logging.getLogger("pullboot")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
