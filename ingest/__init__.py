"""The ``ingest`` command line for glmkb knowledge bases.

The click group is ``ingest.cli.cli``; it is not re-exported here, because a package attribute
named ``cli`` would hide the ``ingest.cli`` module itself (``ingest.cli.main`` then meant click's
own ``main``, which lets errors escape as tracebacks).
"""

from ingest.cli import main

__all__ = ["main"]
