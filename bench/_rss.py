"""Run ``pullboot`` in this very process and record its own peak RSS.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` counts this process only: not
ansible-playbook, not the module processes (those are RUSAGE_CHILDREN). The
bench starts this file instead of the ``pullboot`` console script, which does
the same ``from pullboot.cli import main; sys.exit(main())``.

Usage: BENCH_RSS_FILE=out.json python bench/_rss.py run --source ...
"""

from __future__ import annotations

import json
import os
import resource
import sys

from pullboot.cli import main

code = main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
out = os.environ.get("BENCH_RSS_FILE")
if out:
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"maxrss_kb": usage.ru_maxrss, "exit_code": code}, fh)
sys.exit(code)
