"""Config values checked before anything runs (or is removed): one line naming the key and the fix.

Hydra and OmegaConf accept any value a YAML scalar can hold, so `trainer.max_epochs=ten` or
`data.positive_class=5` would otherwise surface as a traceback deep inside torch or Lightning, after data
loading, or — worse — after `force=true` has already cleared the run folder.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what to do."""


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that cannot run. Cheap: no data, no model is touched."""
    for key, value in (("seed", cfg.seed), ("trainer.max_epochs", cfg.trainer.max_epochs)):
        check_int(key, value, minimum=0)


def check_int(key: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, got {value!r}: e.g. {key}=10")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be ≥ {minimum}, got {value}")
