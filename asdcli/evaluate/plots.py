"""PNG plots of `asd report` results (matplotlib, Agg canvas, no pyplot global state).

Per machine/section: ROC curves per domain (each domain's normals + all anomalies, as the AUC
uses) and over all clips with the pAUC region FPR <= 0.1 shaded, and histograms of normal vs
anomalous scores per domain (about sqrt(clips) bins, integer counts) with the bank's decision
threshold (drawn even when it lies beyond every score: then every clip is judged normal).
Per system: a bar chart of AUC (source), AUC (target) and pAUC per machine with the official
score. For several systems: a bar chart of every system's per-machine harmonic mean.
Legends sit below the axes, never over the data.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from asdcli.artifacts import write_bytes_atomic
from asdcli.errors import ConfigError
from asdcli.evaluate import metrics
from asdcli.evaluate.report import SectionResult, SystemReport
from asdcli.pipeline.cleanup import remove_empty_folder

DPI = 110
_COLORS = {"source": "#1f77b4", "target": "#d62728", "all": "#555555"}
_BAR_COLORS = ("#1f77b4", "#d62728", "#2ca02c")
COMPARISON_PNG = "comparison.png"  # the plot of several systems, beside their folders


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _legend_below(ax: Axes, ncol: int = 2, offset: float = -0.2) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), ncol=ncol, fontsize=8, frameon=False)


def histogram_edges(scores: np.ndarray, threshold: float | None, clips_per_panel: int) -> np.ndarray:
    """Shared bin edges for a section's histograms: about sqrt(clips) bins (4 to 30) over the
    scores and the threshold."""
    values = scores if threshold is None else np.append(scores, threshold)
    lo, hi = float(values.min()), float(values.max())
    n_bins = int(np.clip(np.ceil(np.sqrt(max(clips_per_panel, 1))), 4, 30))
    return np.linspace(lo, hi if hi > lo else lo + 1.0, n_bins + 1)


def _pct(v: float, digits: int = 2) -> str:
    return "n/a" if np.isnan(v) else f"{100 * v:.{digits}f}"


def safe_name(name: str) -> str:
    """A file-system friendly version of a system or machine name (no leading dot: never ``..``
    or a hidden file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "system"


def unique_names(labels: Sequence[str], reserved: Sequence[str] = ()) -> list[str]:
    """:func:`safe_name` of each label; labels whose names would be the same file (also when they
    differ only in case: macOS and Windows file systems ignore it) or one of ``reserved`` get
    ``-`` and the first 8 hex digits of their label's SHA-256 appended, so no plot overwrites another."""
    names = [safe_name(label) for label in labels]
    taken = Counter([n.casefold() for n in names] + [r.casefold() for r in reserved])
    unique = [
        f"{n}-{hashlib.sha256(label.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
        if taken[n.casefold()] > 1
        else n
        for n, label in zip(names, labels)
    ]
    if len({u.casefold() for u in unique} | {r.casefold() for r in reserved}) < len(unique) + len(set(reserved)):
        raise ConfigError(f"Plot names {', '.join(unique)} still collide; give the systems other names (--name).")
    return unique


def system_folders(reports: Sequence[SystemReport]) -> list[str]:
    """The plot sub-folder of each system ("" for a single system: its plots are at the top)."""
    return [""] if len(reports) == 1 else unique_names([r.name for r in reports], reserved=(COMPARISON_PNG,))


def _roc_axes(ax: Axes, r: SectionResult) -> None:
    ax.axvspan(0, metrics.MAX_FPR, color="#f2d16b", alpha=0.35, label=f"pAUC region (FPR ≤ {metrics.MAX_FPR:g})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    for domain in (*metrics.DOMAINS, "all"):
        mask = np.ones(len(r.scores), bool) if domain == "all" else metrics.domain_mask(r.anomaly, r.target, domain)
        y, s = r.anomaly[mask], r.scores[mask]
        if 0 < y.sum() < y.size:
            fpr, tpr, _ = roc_curve(y, s)
            key = "AUC (all)" if domain == "all" else f"AUC ({domain})"
            ax.plot(
                fpr,
                tpr,
                color=_COLORS[domain],
                lw=2 if domain != "all" else 1.2,
                ls="-" if domain != "all" else "--",
                label=f"{domain}: AUC {_pct(r.metrics[key])}",
            )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="share of normal clips flagged (false positive rate)",
        ylabel="share of anomalies found (true positive rate)",
        title="ROC: domain normals vs all anomalies",
    )
    _legend_below(ax)
    ax.grid(alpha=0.3)


def _hist_axes(ax: Axes, r: SectionResult, domain: str, bins: np.ndarray) -> None:
    in_domain = r.target == (1 if domain == "target" else 0)
    normal, anomaly = r.scores[in_domain & (r.anomaly == 0)], r.scores[in_domain & (r.anomaly == 1)]
    for values, color, label in ((normal, "#1f77b4", "normal"), (anomaly, "#ff7f0e", "anomaly")):
        edges = bins.tolist()
        ax.hist(values, bins=edges, histtype="stepfilled", alpha=0.45, color=color, label=f"{label} (n={values.size})")
        ax.hist(values, bins=edges, histtype="step", color=color, lw=1.5)
    title = f"{domain} domain: anomaly scores"
    if r.threshold is not None:
        flagged = int(np.sum(r.scores[in_domain] > r.threshold))
        ax.axvline(
            r.threshold,
            color="black",
            ls="--",
            lw=1.5,
            label=f"decision threshold {r.threshold:.4g} ({flagged} of {int(in_domain.sum())} flagged)",
        )
    else:
        title += " (no threshold: pass --banks)"
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="number of clips", title=title)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(ax)
    ax.grid(alpha=0.3)


def section_figure(report: SystemReport, r: SectionResult) -> Figure:
    """ROC curves and the two domain histograms of one machine/section, side by side."""
    fig = Figure(figsize=(16, 5.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.05, 1, 1]})
    _roc_axes(axes[0], r)
    per_panel = max(int(np.sum(r.target == t)) for t in (0, 1))
    bins = histogram_edges(r.scores, r.threshold, per_panel)
    for ax, domain in zip(axes[1:], metrics.DOMAINS):
        _hist_axes(ax, r, domain, bins)
    m = r.metrics
    fig.suptitle(
        f"{report.name} | {r.machine} section {r.section}: AUC source {_pct(m['AUC (source)'])}, "
        f"AUC target {_pct(m['AUC (target)'])}, pAUC {_pct(m['pAUC'])} (%)",
        fontsize=13,
    )
    fig.tight_layout()
    return fig


def _bar_labels(report: SystemReport) -> list[str]:
    return [
        r.machine if len(report.of_machine(r.machine)) == 1 else f"{r.machine}\nsec {r.section}"
        for r in report.sections
    ]


def summary_figure(report: SystemReport) -> Figure:
    """Grouped bars of AUC (source), AUC (target) and pAUC per machine/section, in %."""
    n = len(report.sections)
    fig = Figure(figsize=(max(7.0, 1.3 * n + 2), 5))
    ax = fig.subplots()
    x = np.arange(n)
    width = 0.27
    for k, (col, color) in enumerate(zip(metrics.OFFICIAL_COLUMNS, _BAR_COLORS)):
        vals = np.array([100 * r.metrics[col] for r in report.sections])
        bars = ax.bar(x + (k - 1) * width, np.nan_to_num(vals), width, color=color, label=col)
        ax.bar_label(
            bars,
            labels=[_pct(v / 100, 1) for v in vals],
            fontsize=7,
            padding=1,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8},
        )
    official = report.official_score
    ax.axhline(50, color="grey", ls=":", lw=1, label="chance (50)")
    if not np.isnan(official):
        ax.axhline(100 * official, color="black", ls="--", lw=1.2, label=f"official score {_pct(official)}")
    ax.set_xticks(x, _bar_labels(report))
    ax.set(
        ylim=(0, 105),
        ylabel="AUC / pAUC (%)",
        title=f"{report.name}: official score {_pct(official)} (harmonic mean of {3 * n} values)",
    )
    _legend_below(ax, ncol=5, offset=-0.12)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_figure(reports: Sequence[SystemReport]) -> Figure:
    """Per-machine harmonic mean of AUC (source), AUC (target), pAUC for every system."""
    machines = sorted({m for r in reports for m in r.machines})
    fig = Figure(figsize=(max(7.0, 1.2 * len(machines) * max(1, len(reports) / 2) + 2), 5))
    ax = fig.subplots()
    x = np.arange(len(machines))
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        vals = np.array([100 * r.machine_score(m)["harmonic mean"] if m in r.machines else np.nan for m in machines])
        bars = ax.bar(
            x + (k - (len(reports) - 1) / 2) * width,
            np.nan_to_num(vals),
            width,
            label=f"{r.name} (official {_pct(r.official_score)})",
        )
        ax.bar_label(
            bars,
            labels=[_pct(v / 100, 1) for v in vals],
            fontsize=7,
            padding=1,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8},
        )
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set_xticks(x, machines)
    ax.set(
        ylim=(0, 105),
        ylabel="machine score (%)\n(harmonic mean of AUC source, AUC target, pAUC)",
        title="Systems compared per machine",
    )
    _legend_below(ax, ncol=min(3, len(reports)), offset=-0.1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def figures(reports: Sequence[SystemReport]) -> list[tuple[str, Figure]]:
    """Every plot with its relative file name.

    One system: ``<machine>_section_<SS>.png`` per machine/section and ``summary.png``.
    Several: the same in ``<system>/`` sub-folders (:func:`system_folders`), plus ``comparison.png``.
    """
    out: list[tuple[str, Figure]] = []
    for report, folder in zip(reports, system_folders(reports)):
        prefix = f"{folder}/" if folder else ""
        stems = unique_names([f"{r.machine}_section_{r.section}" for r in report.sections], reserved=("summary",))
        for r, stem in zip(report.sections, stems):
            out.append((f"{prefix}{stem}.png", section_figure(report, r)))
        out.append((f"{prefix}summary.png", summary_figure(report)))
    if len(reports) > 1:
        out.append((COMPARISON_PNG, comparison_figure(reports)))
    return out


def write_plots(reports: Sequence[SystemReport], out_dir: Path | str) -> list[Path]:
    """Write every PNG of :func:`figures` under ``out_dir`` (atomically); returns the paths. A
    failed write leaves no empty folder that this call made."""
    out_dir = Path(out_dir)
    figs = figures(reports)
    # the folders the writes may create: missing parents of the outputs, up to out_dir itself
    made = {d for rel, _ in figs for d in (out_dir / rel).parents if d == out_dir or out_dir in d.parents}
    made = {d for d in made if not d.exists()}
    written = []
    try:
        for rel, fig in figs:
            path = out_dir / rel
            write_bytes_atomic(path, png_bytes(fig))
            written.append(path)
    except BaseException:
        for folder in sorted(made, key=lambda d: len(d.parts), reverse=True):
            remove_empty_folder(folder)  # deepest first; never a file, never a folder that was there
        raise
    return written
