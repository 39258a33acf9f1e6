"""Launch parameters are plain data; results destinations and IMDS tags are bounded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import ship, values
from pullboot.bounded import load_yaml
from pullboot.errors import ConfigError
from pullboot.runner import RunSpec, write_vars_file


@pytest.mark.parametrize("doc", ["a: !!set {x: null}", "a: !!binary aGk=", "a: !!omap [{x: 1}]",
                                 "a: !!pairs [{x: 1}]", "a: !!python/object:os.system x"])
def test_the_loader_builds_only_plain_data(doc: str) -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml(doc, what="t", error=ConfigError)


def test_timestamps_stay_strings() -> None:
    assert load_yaml("d: 2001-01-01\nt: 2001-12-14t21:59:43.10-05:00\n", what="t",
                     error=ConfigError) == {"d": "2001-01-01", "t": "2001-12-14t21:59:43.10-05:00"}


@pytest.mark.parametrize("value", [{1, 2}, b"x", math.inf, math.nan, {"k{{ x }}": 1},
                                   {1: "x"}, [object()]])
def test_only_plain_data_passes(value: Any) -> None:
    with pytest.raises(ValueError):
        values.check_data(value, "v")


def test_every_string_is_marked_unsafe(tmp_path: Path) -> None:
    spec = RunSpec(run_id="r", private_dir=tmp_path, project_dir=tmp_path, playbooks=(),
                   extravars={"d": {"k": ["1.10", 2, None, {"n": "="}]}, "host": "{{ 1 }}"},
                   data_vars=frozenset({"d"}))
    text = write_vars_file(spec).read_text()
    import json

    assert json.loads(text) == {"d": {"k": [{"__ansible_unsafe": "1.10"}, 2, None,
                                            {"n": {"__ansible_unsafe": "="}}]},
                                "host": "{{ 1 }}"}


@pytest.mark.parametrize("template", ["s3://r-{role}/x/", "s3://b/{run_id:>200000000}/",
                                      "s3://b/{role!r}/", "s3://b/" + "x" * 2000])
def test_results_templates_cannot_steer_the_bucket_or_blow_up(template: str) -> None:
    with pytest.raises(ConfigError):
        ship.check_template(template)


def test_results_placeholders_are_bounded() -> None:
    url = ship.render("s3://b/{hostname}/", {"instance": {"hostname": "h" * 5000},
                                              "run_id": "r"})
    assert len(url) < 300


def test_imds_tags_are_bounded(make_imds: Any) -> None:
    from pullboot.identity import MAX_TAG_VALUE, MAX_TAGS, read_identity
    from pullboot.imds import ImdsClient, ImdsOptions

    tags = {f"t{i}": "v" for i in range(MAX_TAGS + 40)}
    tags["big"] = "x" * (MAX_TAG_VALUE + 1)
    imds = make_imds(tags=tags)
    identity = read_identity(ImdsClient(ImdsOptions(endpoint=imds.url)), read_tags=True)
    assert len(identity.tags) <= MAX_TAGS
    assert all(len(v) <= MAX_TAG_VALUE for v in identity.tags.values())


def test_a_dir_source_is_bounded_by_the_fetch_deadline(tmp_path: Path) -> None:
    from pullboot.errors import SourceError
    from pullboot.retry import Deadline
    from pullboot.sources import SourceSpec, create

    for i in range(3):
        (tmp_path / f"f{i}").write_text("x")
    src = create(SourceSpec(url=str(tmp_path)), tmp_path / "cache")
    src.deadline = Deadline.after(-1)
    with pytest.raises(SourceError, match="not read within the fetch's deadline"):
        src.fetch()
