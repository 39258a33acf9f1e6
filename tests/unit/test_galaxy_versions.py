"""Which galaxy requirements move (git at a branch, a tag or no version) and so are checked."""

from __future__ import annotations

from pathlib import Path

import yaml

from pullboot import galaxy

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_moving_git_requirements_in_every_spec_form(tmp_path: Path) -> None:
    req = tmp_path / "requirements.yml"
    req.write_text(yaml.safe_dump({
        "roles": [
            {"src": "git+https://git.example/a.git", "version": "main", "name": "a"},
            {"src": "https://git.example/b.git", "scm": "git"},
            "git+https://git.example/c.git,v1.2,c",
            {"src": "git+https://git.example/pinned.git", "version": SHA},
            {"src": "geerlingguy.docker", "version": "7.0.0"},  # galaxy: versions are immutable
        ],
        "collections": [
            {"name": "https://git.example/col.git#/sub", "type": "git", "version": "*"},
            "git+https://git.example/col2.git,devel",
            {"name": "community.general", "version": ">=8"},
        ],
    }))
    assert list(galaxy._moving_git_requirements(req)) == [
        ("https://git.example/a.git", "main"), ("https://git.example/b.git", "HEAD"),
        ("https://git.example/c.git", "v1.2"), ("https://git.example/col.git", "HEAD"),
        ("https://git.example/col2.git", "devel")]


def test_old_roles_only_format_and_junk_are_handled(tmp_path: Path) -> None:
    req = tmp_path / "requirements.yml"
    req.write_text(yaml.safe_dump([{"src": "git+file:///srv/r", "version": "main"}]))
    assert list(galaxy._moving_git_requirements(req)) == [("file:///srv/r", "main")]
    req.write_text("just a string\n")
    assert list(galaxy._moving_git_requirements(req)) == []
    req.write_text(yaml.safe_dump({"roles": "nope", "collections": [42, None]}))
    assert list(galaxy._moving_git_requirements(req)) == []


def test_a_url_that_is_an_option_or_a_remote_helper_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    assert galaxy._ls_remote(f"ext::sh -c touch% {marker}", "main") is None
    assert galaxy._ls_remote("--upload-pack=touch /tmp/x", "main") is None
    assert not marker.exists()
