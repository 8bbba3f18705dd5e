"""Running: the training entry point, a run folder's life (claims, signals, resume), sweeps, the LR
finder and per-run figures."""
