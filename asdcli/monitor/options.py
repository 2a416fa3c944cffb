"""Options of windowed scoring, checked before anything heavy is imported or loaded (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asdcli.errors import ConfigError

AGGREGATES = ("max", "mean")


@dataclass(frozen=True)
class WindowedScoring:
    """`asd score --window`: window and hop in seconds (hop None = the window), how a
    recording's score aggregates its windows', the optional per-window CSV and timeline PNG, and
    the run of anomalous windows that makes an alarm (None: no alarms reported)."""

    window_s: float
    hop_s: float | None = None
    aggregate: str = "max"
    windows_csv: Path | None = None
    plot: Path | None = None
    min_windows: int | None = None

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if self.min_windows is not None and self.min_windows < 1:
            raise ConfigError(f"--min-windows must be at least 1, got {self.min_windows}.")


def check_aggregate(how: str) -> None:
    """ConfigError unless ``how`` is one of AGGREGATES."""
    if how not in AGGREGATES:
        raise ConfigError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}.")


def window_options(window: float | None, hop: float | None, how: str, windows_csv: Path | None,
                   plot: Path | None, embeddings: Path | None = None,
                   min_windows: int | None = None) -> WindowedScoring | None:  # fmt: skip
    """The windowed-scoring options, or None without ``--window`` (then the others are errors)."""
    if window is not None and embeddings is not None:
        raise ConfigError("--window scores audio recordings; give clips instead of --embeddings.")
    if window is None:
        others = (("--hop", hop), ("--windows", windows_csv), ("--plot", plot), ("--min-windows", min_windows))
        given = [name for name, v in others if v is not None]
        if given or how != "max":
            raise ConfigError(
                f"{', '.join(given) or '--aggregate'} needs --window SECONDS (score long recordings window by window)."
            )
        return None
    return WindowedScoring(window, hop, how, windows_csv, plot, min_windows)
