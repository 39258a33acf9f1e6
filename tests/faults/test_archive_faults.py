"""Archive safety on the interpreters an AMI has, and bounded tar headers (issue 12).

Debian 12's /usr/bin/python3 is 3.11.2: it has no tarfile extraction filters, so the
attacks of tests/unit/test_archive.py run there too, in a child that imports pullboot.archive
from this checkout (it needs only the standard library).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.unit.test_archive import ATTACKS, _attack_tar, _dir, _file, _link, _raw_header, _tar

SYSTEM_PYTHON = Path("/usr/bin/python3")

# Extracts each archive named on argv into its own box; prints what happened, as JSON.
_EXTRACT_ALL = """
import json, sys
from pathlib import Path
from pullboot.archive import extract
from pullboot.errors import IntegrityError
out = {"version": sys.version.split()[0], "filters": hasattr(__import__("tarfile"),
       "data_filter"), "results": {}}
for arg in sys.argv[1:]:
    archive = Path(arg)
    dest = archive.parent / (archive.name + ".box") / "sandbox" / "dest"
    try:
        extract(archive, dest, name=archive.name)
        out["results"][archive.name] = "extracted"
    except IntegrityError as exc:
        out["results"][archive.name] = exc.message
print(json.dumps(out))
"""

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would count pytest's own
# memory in the forked child.
_PEAK = """
import sys
from pathlib import Path
from pullboot.archive import Limits, extract
from pullboot.errors import IntegrityError
try:
    extract(Path(sys.argv[1]), Path(sys.argv[2]), name="big.tar.gz",
            limits=Limits(max_bytes=1 << 20))
    print("extracted")
except IntegrityError as exc:
    print(exc.message)
status = Path("/proc/self/status").read_text()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


def _interpreters() -> list[Any]:
    system = pytest.param(str(SYSTEM_PYTHON), id="system-python3", marks=pytest.mark.skipif(
        not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3 (Debian 12 has 3.11.2)"))
    return [pytest.param(sys.executable, id="venv-python"), system]


def _child(python: str, script: str, *args: str) -> str:
    # -I would drop PYTHONPATH; -S keeps the system interpreter to its stdlib.
    proc = subprocess.run([python, "-S", "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={"PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("python", _interpreters())
def test_attacks_are_refused_on_every_interpreter(tmp_path: Path, python: str) -> None:
    archives = [_attack_tar(tmp_path, case) for case in sorted(ATTACKS)]
    good = _tar(tmp_path / "good.tar", [_dir("p"), _file("p/web.yml"),
                                        _link("site.yml", "p/web.yml")], "w")
    out = json.loads(_child(python, _EXTRACT_ALL, *map(str, [*archives, good])))
    if python == str(SYSTEM_PYTHON) and out["version"] == "3.11.2":
        assert out["filters"] is False, "Debian's 3.11.2 was expected to lack the filters"
    results = out["results"]
    for case, (_members, match) in ATTACKS.items():
        assert match in results[f"{case}.tar"], (case, out["version"])
    assert results["good.tar"] == "extracted"
    assert (tmp_path / "good.tar.box/sandbox/dest/site.yml").read_text().startswith("- hosts")
    assert not list(tmp_path.rglob("escaped")), "a file was written through the link chain"


def _long_name_bomb(path: Path, size: int) -> Path:
    """A .tar.gz whose first header is a GNU long name of ``size`` bytes (cheap: it gzips)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(_raw_header(b"././@LongLink", tarfile.GNUTYPE_LONGNAME, size))
        chunk = b"a" * (1 << 20)
        for _ in range(size // len(chunk)):
            out.write(chunk)
        out.write(_raw_header(b"f", b"0", 0) + b"\0" * 1024)
    return path


@pytest.mark.parametrize("python", _interpreters())
def test_huge_long_name_header_stays_within_a_small_memory_bound(tmp_path: Path,
                                                                   python: str) -> None:
    # Unbounded, tarfile reads the whole name (and copies it): 128 MiB cost >250 MiB peak.
    archive = _long_name_bomb(tmp_path / "big.tar.gz", 128 << 20)
    message, peak_mib = _child(python, _PEAK, str(archive), str(tmp_path / "dest")).split("\n")[:2]
    assert int(peak_mib) < 64, f"peak RSS {peak_mib} MiB for a 1 MiB max_bytes bundle"
    assert "extended header of 134217728 bytes (limit 65536)" in message
