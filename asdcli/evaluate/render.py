"""Text output of `asd report`: the tidy table as CSV or JSON, the evaluator's result layout
(``official``), Rich tables (percentages), and the compact summary that ends `asd run`.

CSV and JSON carry the rows of :func:`asdcli.evaluate.tidy.tidy_rows`, the same fields in the same
order; the table shows percentages with two decimals (``n/a`` where undefined).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asdcli.evaluate import metrics
from asdcli.evaluate.report import SystemReport
from asdcli.evaluate.tidy import COLUMNS, format_value, json_value, official_rows, tidy_rows, without_epsilon

FORMATS = ("table", "csv", "json", "official")
_TABLE_COLUMNS = ("AUC (source)", "AUC (target)", "AUC (all)", "pAUC", "pAUC (source)", "pAUC (target)")
_SHORT = {
    "AUC (source)": "AUC src",
    "AUC (target)": "AUC tgt",
    "AUC (all)": "AUC all",
    "pAUC": "pAUC",
    "pAUC (source)": "pAUC src",
    "pAUC (target)": "pAUC tgt",
}


def pct(v: float) -> str:
    """A fraction as a percentage with two decimals; ``n/a`` when undefined, 0.00 for the epsilon floor."""
    return "n/a" if math.isnan(v) else f"{100.0 * without_epsilon(v):.2f}"


def to_csv(reports: Sequence[SystemReport]) -> str:
    """The tidy table (one header: system,machine,section,metric,value)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((r.system, r.machine, r.section, r.metric, format_value(r)) for r in tidy_rows(reports))
    return buf.getvalue()


def to_json(reports: Sequence[SystemReport]) -> list[dict[str, Any]]:
    """The tidy table as a list of records with the CSV's fields, in the CSV's order."""
    return [dict(zip(COLUMNS, (r.system, r.machine, r.section, r.metric, json_value(r)))) for r in tidy_rows(reports)]


def to_official(reports: Sequence[SystemReport]) -> str:
    """The evaluator's result.csv layout; with several systems each block starts ``system,<name>``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i, report in enumerate(reports):
        if len(reports) > 1:
            if i:
                writer.writerow([])
            writer.writerow(["system", report.name])
        writer.writerows(official_rows(report))
    return buf.getvalue()


# ---------------------------------------------------------------- Rich tables


def _row_label(report: SystemReport, machine: str, section: str) -> str:
    return escape(machine if len(report.of_machine(machine)) == 1 and section == "00" else f"{machine} sec {section}")


def system_table(report: SystemReport) -> Table:
    """One system: a row per machine/section, per-column means, and the official score."""
    cols = list(_TABLE_COLUMNS)
    table = Table(
        title=f"{escape(report.name)}: AUC / pAUC in % (pAUC: FPR <= {metrics.MAX_FPR:g}, McClish)",
        caption="src/tgt: the domain's normals + all anomalies. h-mean: of AUC src, AUC tgt, pAUC",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("machine", no_wrap=True)
    for c in cols:
        table.add_column(_SHORT[c].replace(" ", "\n"), justify="right", no_wrap=True)
    table.add_column("h-mean", justify="right", style="bold", no_wrap=True)
    for r in report.sections:
        table.add_row(
            _row_label(report, r.machine, r.section),
            *(pct(r.metrics[c]) for c in cols),
            pct(metrics.hmean(r.official_values())),
        )
    summary = report.summary()
    table.add_section()
    table.add_row("a-mean", *(pct(summary["arithmetic mean"][c]) for c in cols), "")
    table.add_row("h-mean", *(pct(summary["harmonic mean"][c]) for c in cols), "")
    table.add_section()
    table.add_row("[bold]official score[/]", *([""] * len(cols)), f"[bold green]{pct(report.official_score)}[/]")
    return table


def decision_table(report: SystemReport) -> Table:
    """One system's precision, recall and F1 per domain (from the decision files), in %."""
    cols = metrics.DECISION_COLUMNS
    table = Table(
        title=f"{escape(report.name)}: decisions, in % (each domain's own clips)",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("machine", no_wrap=True)
    for c in cols:
        table.add_column(c.replace(" score", "").replace(" (", "\n("), justify="right", no_wrap=True)
    for r in report.sections:
        table.add_row(_row_label(report, r.machine, r.section), *(pct(r.metrics[c]) for c in cols))
    summary = report.summary()
    table.add_section()
    table.add_row("a-mean", *(pct(summary["arithmetic mean"][c]) for c in cols))
    table.add_row("h-mean", *(pct(summary["harmonic mean"][c]) for c in cols))
    return table


def _best_marks(values: list[float]) -> list[str]:
    finite = [v for v in values if not math.isnan(v)]
    best = max(finite) if len(finite) > 1 else None
    return [f"[bold]★ {pct(v)}[/]" if best is not None and v == best else pct(v) for v in values]


def comparison_table(reports: Sequence[SystemReport]) -> Table:
    """Several systems: one column per system, rows per machine and metric, best value per row ★."""
    table = Table(
        title="Systems compared: AUC / pAUC in % (★ = best in the row)", header_style="bold", box=box.SIMPLE_HEAD
    )
    table.add_column("machine", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for r in reports:
        table.add_column(escape(r.name), justify="right", no_wrap=True)
    keys = sorted({(s.machine, s.section) for r in reports for s in r.sections})
    nan = float("nan")
    for machine, section in keys:
        found = [{(s.machine, s.section): s for s in r.sections}.get((machine, section)) for r in reports]
        for j, col in enumerate(metrics.OFFICIAL_COLUMNS):
            vals = [nan if s is None else s.metrics[col] for s in found]
            label = machine if section == "00" else f"{machine} sec {section}"
            table.add_row(label if j == 0 else "", col, *_best_marks(vals))
        table.add_section()
    for col in metrics.OFFICIAL_COLUMNS:
        table.add_row("all", f"h-mean {col}", *_best_marks([r.summary()["harmonic mean"][col] for r in reports]))
    table.add_row("[bold]all[/]", "[bold]official score[/]", *_best_marks([r.official_score for r in reports]))
    return table


def tables(reports: Sequence[SystemReport]) -> list[Table]:
    if len(reports) == 1:
        report = reports[0]
        return [system_table(report)] + ([decision_table(report)] if report.has_decisions else [])
    return [comparison_table(reports)]


# ---------------------------------------------------------------- output


def render(reports: Sequence[SystemReport], fmt: str, stream: IO[str], width: int | None = None) -> None:
    """Write the reports to ``stream`` as ``table``, ``csv``, ``json`` or ``official``."""
    if fmt == "csv":
        stream.write(to_csv(reports))
    elif fmt == "official":
        stream.write(to_official(reports))
    elif fmt == "json":
        stream.write(json.dumps(to_json(reports), indent=1, allow_nan=False) + "\n")
    elif fmt == "table":
        console = Console(file=stream, width=width, highlight=False)
        for i, table in enumerate(tables(reports)):
            if i:
                console.print()
            console.print(table)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def render_text(reports: Sequence[SystemReport], fmt: str) -> str:
    """The rendered reports as text (a table is rendered 120 columns wide, without colour)."""
    buf = io.StringIO()
    render(reports, fmt, buf, width=120)
    return buf.getvalue()


def run_summary(report: SystemReport) -> list[str]:
    """The compact end of `asd run` (the official score line follows it): each machine's harmonic
    mean of AUC (source), AUC (target) and pAUC, in %."""
    machines = ", ".join(f"{m} {pct(report.machine_score(m)['harmonic mean'])}" for m in report.machines)
    return [f"Per machine (harmonic mean of AUC source, AUC target, pAUC, %): {machines}"]
