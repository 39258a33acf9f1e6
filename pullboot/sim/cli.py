"""``pullboot sim``: the command line of the instance simulator (parsing and rendering only).

Progress and the instance's journal go to stderr as they happen; the run's report (or JSON
with ``--json``) goes to stdout. The exit code is the observed run's exit code (0 converged,
1 the play failed, ...), or 2 when the simulator itself cannot work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from pullboot.errors import ConfigError

DESCRIPTION = """\
Boot a local instance exactly as EC2 would, with no AWS: an IMDSv2 emulator serves the
identity, tags and user-data; a container boots from a locally built image holding only
pullboot (installed by the pullboot_agent role); pullboot.service runs at boot.

  pullboot sim boot --role web --source git+file://$PWD   boot, stream, report, check the page
  pullboot sim tag pullboot:var:env=prod                  change a tag (IMDS serves it at once)
  pullboot sim converge                                   run what pullboot.timer runs, now
  pullboot sim reboot                                     reboot: the boot run again
  pullboot sim down                                       remove the instance and its servers
  pullboot sim image                                      build (or find) the image only

Needs podman (and root for the first image build: debootstrap). S3 sources need
pip install 'pullboot[sim]' (moto). Everything listens on 127.0.0.1.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``sim`` and its commands on the top-level subparsers ``sub``."""
    sim: argparse.ArgumentParser = sub.add_parser(
        "sim", help="simulate an EC2 instance booting with pullboot (podman)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="default",
                        help="the simulated instance (default: default)")
    common.add_argument("-v", "--verbose", action="count", default=0)
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                         help="give up waiting for the run after this long (default 900)")
    waiting.add_argument("--json", action="store_true", help="print the result as JSON")

    boot = cmds.add_parser("boot", parents=[common, waiting],
                           help="launch: build/find the image, serve IMDS, boot, report")
    boot.add_argument("--role", action="append", default=[], metavar="NAME",
                      help="role(s), served as the pullboot:role tag (repeatable)")
    boot.add_argument("--source", metavar="URL",
                      help="git URL, directory or s3://bucket/key ({role} allowed); local "
                      "paths are mounted read-only, 127.0.0.1 URLs reach the host")
    boot.add_argument("--ref", metavar="REF", help="git branch, tag or sha")
    boot.add_argument("-e", "--var", action="append", default=[], metavar="K=V|@FILE|JSON",
                      help="launch parameters, in the user-data's vars (repeatable; as "
                      "ansible-playbook -e)")
    boot.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                      help="instance tag (repeatable)")
    boot.add_argument("--user-data", metavar="FILE",
                      help="serve FILE as user-data, verbatim (instead of --source/--ref/-e)")
    boot.add_argument("--bundle", metavar="DIR", default=".",
                      help="for an s3:// source: the tree packed into the bundle (default .)")
    boot.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="environment of the instance's pullboot units (repeatable)")
    boot.add_argument("--instance-type", default="t3.micro")
    boot.add_argument("--region", default="eu-west-1")
    boot.add_argument("--rebuild", action="store_true", help="rebuild the image")
    boot.add_argument("--image", metavar="NAME",
                      help="boot this image as it is (default: build or find the one for "
                      "this checkout)")

    image = cmds.add_parser("image", parents=[common],
                            help="build the instance image, or find it cached; print its name")
    image.add_argument("--rebuild", action="store_true", help="rebuild the image")
    cmds.add_parser("converge", parents=[common, waiting],
                    help="run pullboot-converge.service now (what pullboot.timer runs)")
    cmds.add_parser("reboot", parents=[common, waiting],
                    help="reboot the instance and follow its boot run")
    tag = cmds.add_parser("tag", parents=[common], help="set or remove instance tags")
    tag.add_argument("tags", nargs="*", metavar="KEY=VALUE")
    tag.add_argument("--remove", action="append", default=[], metavar="KEY")
    cmds.add_parser("down", parents=[common], help="remove the instance and its servers")
    cmds.add_parser("serve", parents=[common], help=argparse.SUPPRESS)
    return sim


def run(args: argparse.Namespace) -> int:
    """Carry out ``pullboot sim <command>``; returns the exit code."""
    from pullboot.sim.simulator import Simulator

    if args.sim_command == "serve":
        return _serve(args)
    sim = Simulator(note=_note, stream=_stream)
    if args.sim_command == "boot":
        result = sim.boot(_spec(args), rebuild=args.rebuild, image_name=args.image,
                          timeout=args.timeout)
        return _render_run(args, result, result.run, result.page, boot=True)
    if args.sim_command == "image":
        built = sim.image(rebuild=args.rebuild)
        _note(f"{built.name}: " + (f"cached (found in {built.seconds:.1f}s)" if built.cached
                                   else f"built in {built.seconds:.0f}s"))
        sys.stdout.write(built.name + "\n")
        return 0
    if args.sim_command in ("converge", "reboot"):
        action = sim.converge if args.sim_command == "converge" else sim.reboot
        res = action(args.name, timeout=args.timeout)
        return _render_run(args, res, res.run, res.page, boot=False)
    if args.sim_command == "tag":
        from pullboot.sim.spec import parse_pairs

        served = sim.tag(args.name, set_tags=parse_pairs(args.tags, what="tag"),
                         remove=args.remove)
        for key, value in served.items():
            sys.stdout.write(f"{key}={value}\n")
        return 0
    down = sim.down(args.name)
    _note(f"{args.name}: " + ("container removed" if down.container_removed
                              else "no container") + ", "
          + ("servers stopped" if down.servers_stopped else "no servers running"))
    return 0


def _spec(args: argparse.Namespace) -> Any:
    from pullboot.extravars import parse_extra_vars
    from pullboot.roles import check_role_name
    from pullboot.sim.spec import InstanceSpec, absolute_source, new_instance_id, parse_pairs

    roles = tuple(check_role_name(r.strip(), origin="--role")
                  for item in args.role for r in item.split(",") if r.strip())
    user_data = None
    if args.user_data:
        try:
            user_data = Path(args.user_data).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--user-data {args.user_data}: {exc.strerror}",
                              hint="give a readable file") from None
    spec = InstanceSpec(
        name=args.name, instance_id=new_instance_id(), roles=roles,
        source=absolute_source(args.source) if args.source else None,
        ref=args.ref, vars=parse_extra_vars(args.var),
        tags=parse_pairs(args.tag, what="--tag"), user_data=user_data,
        env=parse_pairs(args.env, what="--env"), bundle=str(Path(args.bundle).resolve()),
        instance_type=args.instance_type, region=args.region)
    if spec.served_source() is None:
        raise ConfigError("the simulated instance has no source to boot from",
                          hint="give --source URL (or a source in --user-data)")
    return spec


def _render_run(args: argparse.Namespace, result: Any, unit_run: Any, page: Any, *,
                boot: bool) -> int:
    report = unit_run.report
    code = int(report["exit_code"]) if report else (0 if unit_run.result == "done" else 1)
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return code
    out = sys.stdout
    _note(f"{unit_run.unit} finished in {unit_run.seconds:.1f}s (systemd: {unit_run.result})")
    if report:
        _render_report(report, out)
    else:
        out.write(f"no report was written; see: podman exec {result.container} "
                  f"journalctl -u {unit_run.unit}\n")
    if page is not None:
        verdict = (f"{page.status} {json.dumps(page.title)}" if page.status is not None
                   else f"no answer ({page.error})")
        out.write(f"  page       {page.url} -> {verdict}\n")
    out.flush()
    if boot:
        image = ("image cached" if result.image.cached
                 else f"image built in {result.image.seconds:.0f}s")
        _note(f"instance {result.name!r} ({result.instance_id}) booted in {result.seconds:.1f}s "
              f"({image}); `pullboot sim down --name {result.name}` removes it")
    return code


def _render_report(report: Mapping[str, Any], out: TextIO) -> None:
    out.write(f"pullboot run {report.get('run_id')}: {report.get('status')} "
              f"(exit {report.get('exit_code')}) in {float(report.get('duration_s') or 0):.1f}s\n")
    inst = report.get("instance") or {}
    out.write(f"  instance   {inst.get('id')} {inst.get('region')} {inst.get('instance_type')}\n")
    for role in report.get("roles") or []:
        out.write(f"  role       {role.get('name')} (from {role.get('origin')})\n")
    src = report.get("source") or {}
    if src.get("url"):
        stale = f"  STALE: {src.get('stale_reason')}" if src.get("stale") else ""
        out.write(f"  source     {src.get('url')} ({src.get('kind')}) @ {src.get('revision')}"
                  f"{stale}\n")
    if report.get("playbooks"):
        out.write(f"  playbooks  {', '.join(report['playbooks'])}\n")
    totals: dict[str, int] = {}
    for host in (report.get("stats") or {}).values():
        for key, count in host.items():
            totals[key] = totals.get(key, 0) + int(count)
    if totals:
        out.write("  stats      " + " ".join(f"{k}={v}" for k, v in totals.items()) + "\n")
    for failure in report.get("failures") or []:
        out.write(f"  FAILED     {failure.get('task')}: {failure.get('message')}\n")
    for signal in report.get("signals") or []:
        state = "sent" if signal.get("ok") else "NOT sent"
        out.write(f"  signal     {signal.get('kind')} {state}: {signal.get('detail')}\n")
    error = report.get("error")
    if error:
        out.write(f"  error      {error.get('message')}\n")
        if error.get("hint"):
            out.write(f"  fix        {error['hint']}\n")


def _serve(args: argparse.Namespace) -> int:
    from pullboot.sim import servers
    from pullboot.sim.simulator import sim_home

    def announce(endpoints: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(endpoints) + "\n")
        sys.stdout.flush()
        # The parent reads one line; nothing else may ever go to that pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    servers.serve(sim_home() / args.name, announce=announce)
    return 0


def _note(message: str) -> None:
    sys.stderr.write(f"pullboot sim: {message}\n")
    sys.stderr.flush()


def _stream(line: str) -> None:
    sys.stderr.write(f"  | {line}\n")
    sys.stderr.flush()
