"""``python -m app.api``: the OpenAI-compatible API server (same as ``glmkb-api``)."""

import sys

from app.api.cli import main

if __name__ == "__main__":
    sys.exit(main())
