"""``python -m app``: the glmkb web UI (same as the ``glmkb-web`` console script)."""

import sys

from app.web.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
