"""Source kind detection and URL redaction from tests/fixtures/sources/urls.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import errors
from pullboot.sources import detect_kind, kinds
from pullboot.values import redact_url

TABLE: dict[str, list[dict[str, Any]]] = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "fixtures" / "sources" / "urls.yaml")
    .read_text(encoding="utf-8"))


@pytest.mark.parametrize("row", TABLE["detect"], ids=lambda r: r["url"])
def test_detect_kind(row: dict[str, Any]) -> None:
    if "error" not in row:
        assert detect_kind(row["url"]) == row["kind"]
        assert row["kind"] in kinds()
        return
    with pytest.raises(getattr(errors, row["error"])) as info:
        detect_kind(row["url"])
    assert row["match"] in info.value.message
    for secret in row.get("absent", []):
        assert secret not in str(info.value)
    assert "s3://" in (info.value.hint or "")


@pytest.mark.parametrize("row", TABLE["redact"], ids=lambda r: r["url"])
def test_redact_url(row: dict[str, Any]) -> None:
    shown = redact_url(row["url"])
    assert shown == row["expect"]
    for secret in row.get("absent", []):
        assert secret not in shown


def test_registered_kinds() -> None:
    assert kinds() == ("dir", "git", "s3")
