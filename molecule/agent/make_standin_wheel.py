"""Build a minimal stand-in `pullboot` wheel for the agent scenario.

The scenario tests the pullboot_agent role (venv, pip install of a wheel copied from the
controller, config, units), not pullboot itself, and the container has no package index. This
wheel has no dependencies; its `pullboot` command prints its version and records each call in
/run/pullboot-standin.calls, so the verifier can check what the units ran.

Usage: python3 make_standin_wheel.py OUTDIR   (prints the wheel's path; same bytes every time)
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

NAME = "pullboot"
VERSION = "0.0.0.dev0"
DIST_INFO = f"{NAME}-{VERSION}.dist-info"

MODULE = '''\
"""Stand-in for pullboot, built by molecule/agent/make_standin_wheel.py."""
import os
import sys

VERSION = "@VERSION@"


def main():
    args = sys.argv[1:]
    if args[:1] == ["--version"]:
        print("pullboot " + VERSION + " (molecule stand-in)")
        return 0
    line = " ".join(args) + " config=" + os.environ.get("PULLBOOT_CONFIG", "-") + "\\n"
    try:
        with open("/run/pullboot-standin.calls", "a", encoding="utf-8") as calls:
            calls.write(line)
    except OSError:
        pass
    print("pullboot stand-in called with: " + line.strip())
    return 0
'''.replace("@VERSION@", VERSION)

FILES = {
    "pullboot_standin.py": MODULE,
    f"{DIST_INFO}/METADATA": (
        f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
        "Summary: Stand-in for pullboot in the molecule agent scenario\n"
    ),
    f"{DIST_INFO}/WHEEL": (
        "Wheel-Version: 1.0\nGenerator: pullboot-molecule\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    ),
    f"{DIST_INFO}/entry_points.txt": "[console_scripts]\npullboot = pullboot_standin:main\n",
}


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def main() -> int:
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    wheel = outdir / f"{NAME}-{VERSION}-py3-none-any.whl"
    record = [record_line(p, c.encode()) for p, c in FILES.items()]
    record.append(f"{DIST_INFO}/RECORD,,")
    entries = {**FILES, f"{DIST_INFO}/RECORD": "\n".join(record) + "\n"}
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, content in entries.items():
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
