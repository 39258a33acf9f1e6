"""The user-data examples in packaging/cloud-init/ parse, and every key in them is a setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullboot import config, roles
from pullboot.userdata import parse_user_data

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "packaging" / "cloud-init").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_pullboot_user_data(path: Path) -> None:
    raw = path.read_bytes()
    assert raw.startswith(b"#cloud-config\n")
    section = parse_user_data(raw)
    assert section, f"{path.name} has no pullboot: section"
    settings = config.resolve([roles.user_data_layer(section)])  # raises on a bad key or value
    assert settings.get("source")
    assert settings.origin("source") == "user-data"
