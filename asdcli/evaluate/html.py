"""`asd report --html`: one self-contained page (no external file, script or font) that a team
lead can open from an e-mail: what each metric means, the systems side by side, each system's
per-section table, and every plot embedded as a base64 PNG."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

from asdcli import __version__
from asdcli.evaluate import metrics
from asdcli.evaluate.plots import COMPARISON_PNG, figures, png_bytes, system_folders
from asdcli.evaluate.render import pct
from asdcli.evaluate.report import SystemReport

METRIC_MEANINGS = (
    (
        "official score",
        "Harmonic mean of AUC (source), AUC (target) and pAUC over every machine and section: "
        "the challenge's ranking number; one weak value pulls it down.",
    ),
    (
        "AUC (source)",
        "Chance that an anomalous clip (of either domain) scores higher than a normal clip of the "
        "source domain; 50 % is guessing, 100 % is perfect.",
    ),
    (
        "AUC (target)",
        "The same against the normal clips of the target domain (few training clips): how well "
        "one detector serves the shifted conditions.",
    ),
    (
        "pAUC",
        f"AUC restricted to false positive rates up to {metrics.MAX_FPR:g} (McClish-standardised, 50 % = "
        "chance): how well anomalies are found while few normal clips are flagged.",
    ),
    (
        "precision / recall / F1",
        "From the 0/1 decisions (score above the bank's threshold): share of flagged "
        "clips that are anomalous, share of anomalies flagged, and their harmonic mean, per domain.",
    ),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.label { text-align: left; }
tr.total td { font-weight: bold; background: #f3f3f3; }
td.best { font-weight: bold; color: #1a6e1a; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
dt { font-weight: bold; } dd { margin: 0 0 0.6em 1.5em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _cells(values: Sequence[float], best: bool) -> str:
    finite = [v for v in values if not math.isnan(v)]
    top = max(finite) if best and len(finite) > 1 else None
    return "".join(
        f'<td class="best">{pct(v)}</td>' if top is not None and v == top else f"<td>{pct(v)}</td>" for v in values
    )


def comparison_table(reports: Sequence[SystemReport]) -> str:
    """Systems side by side: per machine the harmonic mean of its official values, then the score."""
    machines = sorted({m for r in reports for m in r.machines})
    nan = float("nan")
    head = "".join(f"<th>{_e(r.name)}</th>" for r in reports)
    rows = [
        f'<tr><td class="label">{_e(m)}</td>'
        + _cells([r.machine_score(m)["harmonic mean"] if m in r.machines else nan for r in reports], True)
        + "</tr>"
        for m in machines
    ]
    rows.append(
        '<tr class="total"><td class="label">official score</td>'
        + _cells([r.official_score for r in reports], True)
        + "</tr>"
    )
    return (
        f'<table id="comparison"><caption>Score per machine in % (harmonic mean of AUC source, AUC target, '
        f"pAUC; best in bold green)</caption><tr><th>machine</th>{head}</tr>{''.join(rows)}</table>"
    )


def metric_table(reports: Sequence[SystemReport]) -> str:
    """Every machine/section's AUC (source), AUC (target) and pAUC, one column per system."""
    keys = sorted({(s.machine, s.section) for r in reports for s in r.sections})
    by_system = [{(s.machine, s.section): s for s in r.sections} for r in reports]
    nan = float("nan")
    rows = []
    for machine, section in keys:
        for col in metrics.OFFICIAL_COLUMNS:
            values = [
                nan if (machine, section) not in found else found[(machine, section)].metrics[col]
                for found in by_system
            ]
            rows.append(
                f'<tr><td class="label">{_e(machine)} section {_e(section)}</td><td class="label">{_e(col)}'
                f"</td>{_cells(values, True)}</tr>"
            )
    head = "".join(f"<th>{_e(r.name)}</th>" for r in reports)
    return (
        f'<table id="metrics"><caption>Every value of the official score, in %</caption>'
        f"<tr><th>machine / section</th><th>metric</th>{head}</tr>{''.join(rows)}</table>"
    )


def system_table(report: SystemReport) -> str:
    """One system: a row per machine/section with every AUC/pAUC and, with decisions, F1."""
    cols = (
        list(metrics.OFFICIAL_COLUMNS)
        + ["AUC (all)"]
        + (["F1 score (source)", "F1 score (target)"] if report.has_decisions else [])
    )
    head = "".join(f"<th>{_e(c)}</th>" for c in cols) + "<th>threshold</th>"
    rows = []
    for r in report.sections:
        threshold = "" if r.threshold is None else f"{r.threshold:.4g}"
        rows.append(
            f'<tr><td class="label">{_e(r.machine)} section {_e(r.section)}</td>'
            + _cells([r.metrics[c] for c in cols], False)
            + f"<td>{threshold}</td></tr>"
        )
    summary = report.summary()["harmonic mean"]
    rows.append(
        '<tr class="total"><td class="label">harmonic mean</td>'
        + _cells([summary[c] for c in cols], False)
        + "<td></td></tr>"
    )
    return f"<table><tr><th>machine / section</th>{head}</tr>{''.join(rows)}</table>"


def _image(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}"><figcaption>{_e(name)}</figcaption></figure>'
    )


def html_page(reports: Sequence[SystemReport]) -> str:
    """The whole page as one string."""
    meanings = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in METRIC_MEANINGS)
    plots = {rel: png_bytes(fig) for rel, fig in figures(reports)}
    parts = [
        f"<h1>Anomalous sound detection report: {', '.join(_e(r.name) for r in reports)}</h1>",
        "<h2>Systems side by side</h2>",
        comparison_table(reports),
    ]
    if COMPARISON_PNG in plots:
        parts.append(_image(COMPARISON_PNG, plots.pop(COMPARISON_PNG)))
    parts += [metric_table(reports), "<h2>What the numbers mean</h2>", f"<dl>{meanings}</dl>"]
    for report, folder in zip(reports, system_folders(reports)):
        parts += [f"<h2>{_e(report.name)}: official score {pct(report.official_score)} %</h2>", system_table(report)]
        parts += [f"<p>Warning: {_e(w)}</p>" for w in report.warnings]
        mine = [rel for rel in plots if not folder or rel.startswith(folder + "/")]
        parts += [_image(rel, plots[rel]) for rel in mine]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>asd report</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n<p><small>Made by asdcli {_e(__version__)} "
        "(`asd report --html`).</small></p>\n</body></html>\n"
    )
