"""Stage runners: pure functions of (RunConfig, input artifacts) -> output artifacts + metrics."""
