"""Named back-end configurations for `asd run --recipe` (measured in bench/backends.py, README)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from asdcli.backend.bank import BankConfig
from asdcli.errors import ConfigError

RECIPES: dict[str, BankConfig] = {
    "seed": BankConfig(),  # the seed's method: standardized cosine 1-NN
    "density": BankConfig(score_norm="density"),  # best on the synthetic benchmark (README)
}
RECIPE_HELP = (
    "seed = standardized cosine 1-NN (the seed's method); density = --score-norm density "
    "with the default K rule (best in bench/backends.py)"
)


def recipe_bank_config(name: str, **overrides: Any) -> BankConfig:
    """The recipe's BankConfig with the options given explicitly (not None) applied on top."""
    if name not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}.")
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[name], **given)
