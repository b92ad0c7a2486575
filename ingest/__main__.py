"""``python -m ingest`` runs the ingest CLI."""

import sys

from ingest.cli import main

sys.exit(main())
