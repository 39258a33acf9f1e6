"""``python -m pullboot``: same as the ``pullboot`` console script."""

from pullboot.cli import main

raise SystemExit(main())
