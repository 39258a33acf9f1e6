"""Results shipping: each run's report and events to S3, spooled when S3 is unreachable.

``results.s3`` names the destination, templated per run, e.g.
``s3://bucket/pullboot/date={date}/role={role}/instance={instance_id}/{run_id}/``
(a URL without placeholders gets that layout appended). Two objects go there:
``report.json`` (one JSON object on one line, as Athena's JSON SerDe reads it)
and ``events.jsonl.gz``. The Hive-style ``key=value`` path parts make ``date``,
``role`` and ``instance`` partitions for Athena.

Write-ahead spool: a run's results are first written under
``<state_dir>/spool/<run_id>/`` and removed only once shipped. Each run ships
its own results and, at the same time, whatever earlier runs left in the spool
(oldest first), in two background threads joined for at most ``results.timeout``
seconds: shipping never delays a boot longer than that, a slow upload of this
run's results does not starve the backlog (nor the reverse), and what did not
make it stays spooled for the next run. The destination is stored with each
spooled entry, so a later run ships it even if ``results.s3`` has changed since.

Sinks sit behind :data:`SINKS`, keyed by URL scheme (``s3`` for now).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import string
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from pullboot.atomic import fsync_dir, read_json, remove, write_atomic, write_json_atomic
from pullboot.errors import ConfigError, PullbootError, ShipError

log = logging.getLogger(__name__)

REPORT_NAME: Final = "report.json"
EVENTS_NAME: Final = "events.jsonl.gz"
PLACEHOLDERS: Final = frozenset({"date", "year", "month", "day", "hour", "role", "instance_id",
                                 "hostname", "account_id", "region", "run_id", "status"})
DEFAULT_LAYOUT: Final = "date={date}/role={role}/instance={instance_id}/{run_id}/"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._+=-]")


class Sink(ABC):
    """Where results go. The constructor does no I/O."""

    scheme: ClassVar[str]

    def __init__(self, url: str, *, region: str | None) -> None:
        self.url = url
        self.region = region

    @abstractmethod
    def put(self, name: str, body: bytes, *, content_type: str) -> None:
        """Store ``body`` as ``name`` under the URL; raises ShipError."""


SINKS: Final[dict[str, type[Sink]]] = {}


def register(cls: type[Sink]) -> type[Sink]:
    SINKS[cls.scheme] = cls
    return cls


@register
class S3Sink(Sink):
    """``s3://bucket/prefix/``: one PutObject per file (botocore retries transient errors)."""

    scheme = "s3"

    def put(self, name: str, body: bytes, *, content_type: str) -> None:
        from botocore.exceptions import ClientError

        from pullboot import aws

        parts = urlsplit(self.url)
        key = parts.path.lstrip("/") + name
        try:
            aws.client("s3", region=self.region).put_object(
                Bucket=parts.netloc, Key=key, Body=body, ContentType=content_type)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise ShipError(f"s3://{parts.netloc}/{key}: {err.get('Code', '?')}: "
                            f"{err.get('Message', exc)}") from None
        except aws.CALL_ERRORS as exc:
            raise ShipError(f"s3://{parts.netloc}/{key}: {aws.describe_failure(exc)}") from None


def sink_for(url: str, *, region: str | None) -> Sink:
    scheme = urlsplit(url).scheme
    if scheme not in SINKS or not urlsplit(url).netloc:
        raise ConfigError(f"results destination {url!r} is not supported",
                          hint="use s3://bucket/prefix (placeholders: "
                          + ", ".join(sorted(PLACEHOLDERS)) + ")")
    return SINKS[scheme](url, region=region)


MAX_URL: Final = 1024
MAX_VALUE: Final = 128  # per placeholder: S3 keys stay short whatever IMDS says


def check_template(template: str) -> None:
    """Raise ConfigError for an unsupported scheme or an unknown placeholder."""
    sink_for(template.split("{", 1)[0] or template, region=None)
    if "{" in urlsplit(template).netloc or len(template) > MAX_URL:
        raise ConfigError(f"results.s3 {template[:80]!r}: placeholders may stand only in the "
                          f"key part, and the template is at most {MAX_URL} characters",
                          hint="write s3://BUCKET/prefix/{role}/...: the bucket is fixed")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"results.s3 {template!r}: {exc}",
                          hint="placeholders are written {name}") from None
    if any(spec or conv for _, spec, conv in fields):
        raise ConfigError(f"results.s3 {template[:80]!r}: a placeholder has a format spec or "
                          "conversion", hint="placeholders are written plainly: {name}")
    names = {name for name, _, _ in fields if name}
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ConfigError(f"results.s3 {template!r} uses unknown placeholder(s) "
                          f"{', '.join(sorted(unknown))}",
                          hint="known: " + ", ".join(sorted(PLACEHOLDERS)))


def render(template: str, report: Mapping[str, Any]) -> str:
    """The destination URL for one run (ends with ``/``); ConfigError for a bad template."""
    check_template(template)
    if "{" not in template:
        template = template.rstrip("/") + "/" + DEFAULT_LAYOUT
    elif "{run_id}" not in template:
        template = template.rstrip("/") + "/{run_id}/"
    inst = report.get("instance") or {}
    started = str(report.get("started_at") or "")
    values = {
        "date": started[:10], "year": started[:4], "month": started[5:7],
        "day": started[8:10], "hour": started[11:13],
        "role": "+".join(r["name"] for r in report.get("roles") or []) or "none",
        "instance_id": inst.get("id") or inst.get("hostname") or "unknown",
        "hostname": inst.get("hostname") or "unknown",
        "account_id": inst.get("account_id") or "unknown",
        "region": inst.get("region") or "unknown",
        "run_id": report.get("run_id") or "unknown", "status": report.get("status") or "unknown",
    }
    safe = {k: _UNSAFE.sub("_", str(v)) or "unknown" for k, v in values.items()}
    url = template.format(**{k: v[:MAX_VALUE] for k, v in safe.items()})
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class SpoolEntry:
    """One run's results waiting to be shipped."""

    path: Path
    run_id: str
    dest: str
    region: str | None


class Spool:
    """``<state_dir>/spool/<run_id>/``: meta.json, report.json, events.jsonl.gz."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, *, run_id: str, dest: str, region: str | None, report: Mapping[str, Any],
            events_file: Path | None) -> SpoolEntry:
        """Write one run's results completely, then make them visible with a rename."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{run_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        line = json.dumps(report, default=str, separators=(",", ":"), ensure_ascii=False)
        write_atomic(tmp / REPORT_NAME, (line + "\n").encode("utf-8"))
        with (tmp / EVENTS_NAME).open("wb") as raw, gzip.open(raw, "wb") as out:
            if events_file is not None and events_file.is_file():
                with events_file.open("rb") as src:
                    shutil.copyfileobj(src, out)
            out.close()
            raw.flush()
            os.fsync(raw.fileno())  # on disk before the rename publishes the entry
        write_json_atomic(tmp / "meta.json", {"run_id": run_id, "dest": dest, "region": region})
        target = self.root / run_id
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        fsync_dir(self.root)
        return SpoolEntry(target, run_id, dest, region)

    def pending(self) -> list[SpoolEntry]:
        """Complete entries, oldest first (run ids sort by time)."""
        if not self.root.is_dir():
            return []
        entries = []
        for path in sorted(p for p in self.root.iterdir() if not p.name.startswith(".")):
            meta = read_json(path / "meta.json", dict, what="spool entry's meta")
            region = meta.get("region") if meta else None
            if (meta and isinstance(meta.get("run_id"), str) and isinstance(meta.get("dest"), str)
                    and isinstance(region, str | None)):
                entries.append(SpoolEntry(path, meta["run_id"], meta["dest"], region))
                continue
            # Not shippable, and never will be: without its destination the
            # entry cannot go anywhere, so it must not hold a spool slot.
            log.warning("dropping unshippable spool entry %s (its meta.json is damaged)", path)
            remove(path)
        return entries

    def remove(self, entry: SpoolEntry) -> None:
        # Renamed away first, so that pending() never sees a half-deleted entry.
        gone = self.root / f".del-{entry.path.name}"
        try:
            entry.path.rename(gone)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def count(self) -> int:
        """Entries waiting (without reading them)."""
        if not self.root.is_dir():
            return 0
        return sum(1 for p in self.root.iterdir() if not p.name.startswith("."))

    def trim(self, keep: int) -> int:
        """Drop the oldest entries beyond ``keep``; returns how many were dropped."""
        entries = self.pending()
        dropped = entries[: max(len(entries) - max(keep, 1), 0)]
        for entry in dropped:
            log.warning("spool full: dropping the unshipped results of run %s", entry.run_id)
            self.remove(entry)
        return len(dropped)


def ship_entry(entry: SpoolEntry) -> None:
    """Send one spooled entry to its destination and remove it; raises ShipError."""
    sink = sink_for(entry.dest, region=entry.region)
    sink.put(EVENTS_NAME, (entry.path / EVENTS_NAME).read_bytes(),
             content_type="application/gzip")
    # The report last: its presence tells a reader that the run's results are complete.
    sink.put(REPORT_NAME, (entry.path / REPORT_NAME).read_bytes(),
             content_type="application/json")


@dataclass(frozen=True)
class ShipResult:
    """What shipping did for this run; ``as_dict`` is the report's ``shipped`` field."""

    url: str | None
    ok: bool
    spooled: bool
    backlog_shipped: int
    pending: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deliver(*, report: Mapping[str, Any], events_file: Path | None, template: str | None,
            region: str | None, spool: Spool, timeout: float, keep: int) -> ShipResult | None:
    """Spool this run's results (when a destination is set) and ship all pending entries.

    Returns None when there is nothing to ship and no destination. Never raises
    for network trouble; waits at most ``timeout`` seconds.
    """
    current: SpoolEntry | None = None
    dest = None
    if template:
        dest = render(template, report)
        current = spool.add(run_id=str(report["run_id"]), dest=dest, region=region,
                            report=report, events_file=events_file)
        spool.trim(keep)
    entries = spool.pending()
    if not entries:
        return None
    mine = [e for e in entries if current is not None and e.run_id == current.run_id]
    backlog_entries = [e for e in entries if e not in mine]
    done: dict[str, str | None] = {}
    lock = threading.Lock()

    def work(batch: list[SpoolEntry]) -> None:
        for entry in batch:
            try:
                ship_entry(entry)
                error = None
                spool.remove(entry)
            except (PullbootError, OSError) as exc:
                error = str(exc)
            with lock:
                done[entry.run_id] = error

    started = time.monotonic()
    # This run's results and the backlog each get a thread and the whole
    # budget: a slow upload of one never starves the other. Daemon threads: if
    # S3 hangs past the timeout the process still exits, and whatever was not
    # shipped stays spooled for the next run.
    workers = [threading.Thread(target=work, args=(batch,), name=f"ship-{name}", daemon=True)
               for name, batch in (("run", mine), ("backlog", backlog_entries)) if batch]
    for worker in workers:
        worker.start()
    deadline = started + timeout
    for worker in workers:
        worker.join(max(deadline - time.monotonic(), 0.0))
    with lock:
        outcome = dict(done)
    left = spool.count()
    backlog = sum(1 for rid, err in outcome.items()
                  if err is None and (current is None or rid != current.run_id))
    if current is None:
        log.info("shipped %d spooled result(s); %d still pending", backlog, left)
        return ShipResult(None, backlog > 0, False, backlog, left)
    if current.run_id in outcome and outcome[current.run_id] is None:
        log.info("results shipped to %s in %.1fs (%d earlier run(s) too)", dest,
                 time.monotonic() - started, backlog)
        return ShipResult(dest, True, False, backlog, left)
    error = outcome.get(current.run_id) or f"not done within results.timeout ({timeout:g}s)"
    log.warning("results not shipped (%s); spooled for the next run", error)
    return ShipResult(dest, False, True, backlog, left, error)
