"""glmkb chains package."""
