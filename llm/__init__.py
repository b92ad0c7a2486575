"""glmkb llm package."""
