"""glmkb kb package."""
