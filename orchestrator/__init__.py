"""Ray Tune orchestration of searches: experiment specs, trainables, sweeps, results, the CLI."""
