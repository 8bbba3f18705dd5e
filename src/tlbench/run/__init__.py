"""Running: the entry point, a run folder's life (claims, signals, resume), sweeps, LR finder, figures."""
