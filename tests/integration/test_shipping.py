"""Results shipping to S3 (moto), spooling when S3 is down, and the time bound on it."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import run_cli, web_tree
from tests.fakes.faultproxy import S3_ENDPOINT_ENV

BUCKET = "fleet-results"


def _config(tmp_path: Path, url: str, timeout: float = 20) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(
        {"results": {"s3": url, "timeout": timeout}}))


def _bucket(aws: Any) -> Any:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return s3


def _keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_report_and_events_land_under_a_queryable_prefix(aws: Any, make_imds: Any,
                                                          make_repo: Any, tmp_path: Path,
                                                          state_dir: Path, out_dir: Path) -> None:
    s3 = _bucket(aws)
    imds = make_imds(tags={"pullboot:role": "web"})
    _config(tmp_path, f"s3://{BUCKET}/pullboot")  # no placeholders: the default layout
    res = run_cli("run", "--source", make_repo(web_tree()).url, "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    report = res.report
    prefix = (f"pullboot/date={report['started_at'][:10]}/role=web/"
              f"instance={imds.instance_id}/{report['run_id']}/")
    assert _keys(s3) == [prefix + "events.jsonl.gz", prefix + "report.json"]
    body = s3.get_object(Bucket=BUCKET, Key=prefix + "report.json")["Body"].read().decode()
    assert body.count("\n") == 1, "one JSON object per line, as Athena reads it"
    shipped = json.loads(body)
    assert shipped["run_id"] == report["run_id"] and shipped["status"] == "successful"
    events = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=prefix + "events.jsonl.gz")[
        "Body"].read()).decode().splitlines()
    assert len(events) == report["event_count"] > 0
    assert report["shipped"] == {"url": f"s3://{BUCKET}/{prefix}", "ok": True, "spooled": False,
                                 "backlog_shipped": 0, "pending": 0, "error": None}
    saved = json.loads((state_dir / "runs" / report["run_id"] / "report.json").read_text())
    assert saved["shipped"]["ok"] is True
    assert not list((state_dir / "spool").iterdir())


def test_s3_down_spools_and_the_next_run_ships_both(aws: Any, fault_proxy: Any, make_repo: Any,
                                                    tmp_path: Path, state_dir: Path,
                                                    out_dir: Path) -> None:
    s3 = _bucket(aws)
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    url = f"s3://{BUCKET}/runs/{{role}}/{{run_id}}/"
    _config(tmp_path, url, timeout=2)
    repo = make_repo(web_tree())
    proxy.down()
    started = time.monotonic()
    first = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                    "--json")
    wall = time.monotonic() - started
    assert first.rc == 0, first.stderr  # shipping never fails a run
    shipped = first.report["shipped"]
    assert (shipped["ok"], shipped["spooled"], shipped["pending"]) == (False, True, 1)
    assert "spooled for the next run" in first.report["warnings"][-1]
    assert [p.name for p in (state_dir / "spool").iterdir()] == [first.report["run_id"]]
    # Shipping held the boot up for about results.timeout (2 s), not for botocore's
    # retries against the dead endpoint (5 attempts, 30 s read timeout): a generous
    # 3x bound, plus what starting and ending the process costs on a loaded machine.
    assert wall - first.report["duration_s"] < 3 * 2 + 10, wall

    # The rest is not about the timeout: a budget no machine needs, so that a
    # loaded one cannot make the backlog miss it.
    _config(tmp_path, url, timeout=120)
    proxy.up()
    second = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                     "--json")
    assert second.rc == 0, second.stderr
    assert second.report["shipped"]["ok"] is True
    assert second.report["shipped"]["backlog_shipped"] == 1
    assert _keys(s3) == sorted(f"runs/web/{r.report['run_id']}/{name}"
                               for r in (first, second)
                               for name in ("events.jsonl.gz", "report.json"))
    assert not list((state_dir / "spool").iterdir())


def test_bad_results_url_is_refused_up_front(make_repo: Any, tmp_path: Path,
                                             state_dir: Path) -> None:
    _config(tmp_path, "s3://bucket/{nope}/")
    res = run_cli("run", "--source", make_repo(web_tree()).url, "--role", "web", "--json")
    assert res.rc == 2
    assert "unknown placeholder" in res.report["error"]["message"]
    assert "instance_id" in res.report["error"]["hint"]
    assert not list((state_dir / "releases").iterdir())


def test_backlog_ships_while_this_runs_upload_takes_the_whole_budget(
        aws: Any, fault_proxy: Any, make_repo: Any, tmp_path: Path, state_dir: Path,
        out_dir: Path) -> None:
    """A stalled upload of this run's results must not starve the spooled backlog."""
    s3 = _bucket(aws)
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    _config(tmp_path, f"s3://{BUCKET}/runs/{{run_id}}/", timeout=8)
    proxy.down()
    first = run_cli(*args)
    assert first.rc == 0 and first.report["shipped"]["spooled"] is True, first.stderr
    proxy.up()

    # This run's results go to a prefix whose uploads hang far beyond results.timeout
    # (a bounded stall: the proxy's stop ends it); the backlog keeps its own destination.
    _config(tmp_path, f"s3://{BUCKET}/slow/{{run_id}}/", timeout=8)
    proxy.stall(f"/{BUCKET}/slow/", 120)
    second = run_cli(*args)
    assert second.rc == 0, second.stderr
    shipped = second.report["shipped"]
    assert (shipped["ok"], shipped["spooled"], shipped["backlog_shipped"]) == (False, True, 1), \
        shipped
    first_id, second_id = first.report["run_id"], second.report["run_id"]
    assert _keys(s3) == [f"runs/{first_id}/events.jsonl.gz", f"runs/{first_id}/report.json"]
    # What did not make it waits for the next run, and is shipped then.
    assert [p.name for p in (state_dir / "spool").iterdir()] == [second_id]

    proxy.stall(f"/{BUCKET}/slow/", None)
    _config(tmp_path, f"s3://{BUCKET}/slow/{{run_id}}/", timeout=120)
    third = run_cli(*args)
    assert third.rc == 0, third.stderr
    assert (third.report["shipped"]["ok"], third.report["shipped"]["backlog_shipped"]) == (
        True, 1)
    third_id = third.report["run_id"]
    assert _keys(s3) == sorted([f"runs/{first_id}/events.jsonl.gz", f"runs/{first_id}/report.json",
                                *(f"slow/{rid}/{name}" for rid in (second_id, third_id)
                                  for name in ("events.jsonl.gz", "report.json"))])
    assert not list((state_dir / "spool").iterdir())
