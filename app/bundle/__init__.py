"""Offline deployment: ``glmkb bundle OUT`` builds a folder that installs and runs glmkb on a
machine without network; ``glmkb bundle verify DIR`` checks one. One module per step."""

from app.bundle.build import BundleResult, build_bundle
from app.bundle.errors import BundleError, DownloadError
from app.bundle.target import Target, make_target
from app.bundle.verify import verify_path

__all__ = ["BundleError", "BundleResult", "DownloadError", "Target", "build_bundle", "make_target", "verify_path"]
