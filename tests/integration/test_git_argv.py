"""Values are data, never options: a ref, URL or sha never reaches git as an option.

Real git, a real repo, through the CLI. The marker file proves nothing ran: before
``--end-of-options``, the ref below made ``git fetch`` run the command as root (issue 11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, web_tree


def test_a_ref_that_looks_like_an_option_runs_nothing(make_repo: Any, tmp_path: Path) -> None:
    repo = make_repo(web_tree())
    marker = tmp_path / "pwned"
    ref = f"--upload-pack=touch {marker}; git-upload-pack"
    result = run_cli("run", "--source", repo.url, "--ref", ref, "--role", "web", "--json")
    assert not marker.exists(), "the ref was read as a git option"
    # The settings check refuses it first (pullboot.values); the git layer below is tested
    # on its own in test_the_git_layer_keeps_an_option_like_ref_apart.
    assert result.rc == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_the_git_layer_keeps_an_option_like_ref_apart(make_repo: Any, tmp_path: Path) -> None:
    # Defence in depth: even a ref that slipped past the settings check never reaches git as
    # an option (--end-of-options), so the source fails as "ref not found" and runs nothing.
    from pullboot.errors import SourceError
    from pullboot.sources import SourceSpec, create

    repo = make_repo(web_tree())
    marker = tmp_path / "pwned"
    ref = f"--upload-pack=touch {marker}; git-upload-pack"
    src = create(SourceSpec(url=repo.url, ref=ref), tmp_path / "cache")
    with pytest.raises(SourceError):
        src.fetch()
    with pytest.raises(SourceError):
        src.remote_revision()
    assert not marker.exists(), "the ref was read as a git option"


def test_plan_with_an_option_like_ref_runs_nothing(make_repo: Any, tmp_path: Path) -> None:
    repo = make_repo(web_tree())
    marker = tmp_path / "pwned"
    ref = f"--upload-pack=touch {marker}; git-upload-pack"
    result = run_cli("plan", "--source", repo.url, "--ref", ref, "--role", "web")
    assert not marker.exists(), "the ref was read as a git ls-remote option"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("source", ["--upload-pack=touch {marker};x.git",
                                    "git+ext::sh -c touch% {marker}"],
                         ids=["option-url", "ext-transport"])
def test_a_source_url_never_runs_a_command(source: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run_cli("run", "--source", source.format(marker=marker), "--role", "web",
                     "--json")
    assert not marker.exists()
    assert result.rc != 0
    assert "Traceback" not in result.stderr
