"""Timeline PNG of windowed scores: score against time, the bank's threshold, anomalous stretches
shaded (matplotlib Figure on the Agg canvas, no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from asdcli.artifacts import write_bytes_atomic
from asdcli.monitor.recording import RecordingScores
from asdcli.monitor.windows import anomalous_runs

DPI = 110
MAX_PANELS = 12


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "h"
    if seconds >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _panel(ax: Axes, rec: RecordingScores) -> None:
    scale, unit = _time_unit(float(rec.end_s.max()))
    centre = (rec.start_s + rec.end_s) / 2 / scale
    flags = rec.decisions
    for n, (i, j) in enumerate(anomalous_runs(flags)):
        ax.axvspan(
            rec.start_s[i] / scale,
            rec.end_s[j - 1] / scale,
            color="#d62728",
            alpha=0.18,
            lw=0,
            label="windows above the threshold" if n == 0 else None,
        )
    ax.plot(
        centre, rec.scores, color="#1f77b4", lw=1.2, marker="." if len(centre) <= 200 else None, label="window score"
    )
    ax.axhline(rec.threshold, color="#d62728", ls="--", lw=1, label=f"threshold {rec.threshold:.4g}")
    ax.set(
        xlabel=f"time ({unit}, window centre)",
        ylabel="anomaly score",
        xlim=(0, float(rec.end_s.max()) / scale),
        title=f"{rec.filename}: {int(flags.sum())} of {len(flags)} windows above the threshold",
    )
    ax.legend(loc="upper left", fontsize=8)


def plot_timeline(path: Path | str, recordings: Sequence[RecordingScores]) -> Path:
    """Write one panel per recording (the first MAX_PANELS) into a PNG, atomically."""
    shown = list(recordings)[:MAX_PANELS]
    fig = Figure(figsize=(10, 3.0 * len(shown)), layout="constrained")
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, rec in zip(axes, shown):
        _panel(ax, rec)
    if len(recordings) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(recordings)} recordings")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)
