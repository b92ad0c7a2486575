"""glmkb benchmarks: one command each, a short table on stdout and JSON under --out ($OUT). See docs/PERFORMANCE.md."""
