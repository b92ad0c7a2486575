"""glmkb app package."""
