"""Output of `asd report`: a Rich table (percentages), a baseline-style CSV, or JSON; and the
one-call API (:func:`run_report`, :func:`report_submission`) that loads the ground truth,
evaluates, writes plots and renders.

CSV and JSON carry fractions in [0, 1] at full precision (as the official result files do); the
table shows percentages with two decimals. Undefined values are empty (CSV), ``null`` (JSON) or
``n/a`` (table).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from asdcli.evaluate import metrics
from asdcli.artifacts import write_text_atomic
from asdcli.console import is_terminal, stderr_console
from asdcli.errors import ConfigError
from asdcli.evaluate.ground_truth import load_ground_truth, write_ground_truth
from asdcli.evaluate.report import STDIN, SystemReport, evaluate_all

FORMATS = ("table", "csv", "json")
# The baseline's result-file columns, then AUC (all) (which the baseline does not write).
CSV_COLUMNS = tuple(c for c in metrics.COLUMNS if c != "AUC (all)") + ("AUC (all)",)
_TABLE_COLUMNS = ("AUC (source)", "AUC (target)", "AUC (all)", "pAUC", "pAUC (source)", "pAUC (target)")
_SHORT = {"AUC (source)": "AUC src", "AUC (target)": "AUC tgt", "AUC (all)": "AUC all", "pAUC": "pAUC",
          "pAUC (source)": "pAUC src", "pAUC (target)": "pAUC tgt"}


def _num(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.10g}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100.0 * v:.2f}"


def _clean(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


# ---------------------------------------------------------------- CSV

def csv_rows(report: SystemReport) -> list[list[str]]:
    """The baseline-style result layout of one system: per machine a block (name line, header,
    one row per section, arithmetic/harmonic mean rows, blank line), then a summary over all
    machine types and sections, ending with the official score."""
    rows: list[list[str]] = []
    for machine in report.machines:
        rows += [[machine], ["section", *CSV_COLUMNS]]
        rows += [[r.section, *(_num(r.metrics[c]) for c in CSV_COLUMNS)] for r in report.of_machine(machine)]
        for label, values in report.machine_summary(machine).items():
            rows.append([label, *(_num(values[c]) for c in CSV_COLUMNS)])
        rows.append([])
    rows.append(["summary", *CSV_COLUMNS])
    for label, values in report.summary().items():
        rows.append([f"{label} over all machine types and sections", *(_num(values[c]) for c in CSV_COLUMNS)])
    rows += [[], ["official score", _num(report.official_score)]]
    return rows


def to_csv(reports: Sequence[SystemReport]) -> str:
    """CSV text; with several systems each block starts with a ``system,<name>`` line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i, report in enumerate(reports):
        if len(reports) > 1:
            if i:
                writer.writerow([])
            writer.writerow(["system", report.name])
        writer.writerows(csv_rows(report))
    return buf.getvalue()


# ---------------------------------------------------------------- JSON

def system_dict(report: SystemReport) -> dict[str, Any]:
    """A JSON-ready dict of one system (fractions, ``None`` where undefined)."""
    machines: dict[str, Any] = {}
    for machine in report.machines:
        sections = {}
        for r in report.of_machine(machine):
            sec: dict[str, Any] = {c: _clean(r.metrics[c]) for c in metrics.COLUMNS}
            threshold = r.threshold
            sec.update(n_clips=len(r.filenames), n_anomaly=int(r.anomaly.sum()), n_target=int(r.target.sum()),
                       decision_threshold=threshold, has_decisions=r.decisions is not None)
            sections[r.section] = sec
        means = {k: {c: _clean(v[c]) for c in metrics.COLUMNS} for k, v in report.machine_summary(machine).items()}
        score = {k: _clean(v) for k, v in report.machine_score(machine).items()}
        machines[machine] = {"sections": sections, **means, "score": score}
    summary = {k: {c: _clean(v[c]) for c in metrics.COLUMNS} for k, v in report.summary().items()}
    return {"name": report.name, "path": report.path, "official_score": _clean(report.official_score),
            "n_official_values": 3 * len(report.sections), "machines": machines, "summary": summary,
            "warnings": list(report.warnings)}


def to_json(reports: Sequence[SystemReport]) -> dict[str, Any]:
    return {"max_fpr": metrics.MAX_FPR, "columns": list(metrics.COLUMNS),
            "systems": [system_dict(r) for r in reports]}


# ---------------------------------------------------------------- Rich tables

def _row_label(report: SystemReport, machine: str, section: str) -> str:
    return machine if len(report.of_machine(machine)) == 1 and section == "00" else f"{machine} sec {section}"


def system_table(report: SystemReport) -> Table:
    """One system: a row per machine/section, per-column means, and the official score."""
    cols = list(_TABLE_COLUMNS)
    table = Table(title=f"{report.name}: AUC / pAUC in % (pAUC: FPR <= {metrics.MAX_FPR:g}, McClish)",
                  caption="src/tgt: the domain's normals + all anomalies. h-mean: of AUC src, AUC tgt, pAUC",
                  header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("machine", no_wrap=True)
    for c in cols:
        table.add_column(_SHORT[c].replace(" ", "\n"), justify="right", no_wrap=True)
    table.add_column("h-mean", justify="right", style="bold", no_wrap=True)
    for r in report.sections:
        table.add_row(_row_label(report, r.machine, r.section), *(_pct(r.metrics[c]) for c in cols),
                      _pct(metrics.hmean(r.official_values())))
    summary = report.summary()
    table.add_section()
    table.add_row("a-mean", *(_pct(summary["arithmetic mean"][c]) for c in cols), "")
    table.add_row("h-mean", *(_pct(summary["harmonic mean"][c]) for c in cols), "")
    table.add_section()
    table.add_row("[bold]official score[/]", *([""] * len(cols)), f"[bold green]{_pct(report.official_score)}[/]")
    return table


def decision_table(report: SystemReport) -> Table:
    """One system's precision, recall and F1 per domain (from the decision files), in %."""
    cols = metrics.DECISION_COLUMNS
    table = Table(title=f"{report.name}: decisions, in % (each domain's own clips)", header_style="bold",
                  box=box.SIMPLE_HEAD)
    table.add_column("machine", no_wrap=True)
    for c in cols:
        table.add_column(c.replace(" score", "").replace(" (", "\n("), justify="right", no_wrap=True)
    for r in report.sections:
        table.add_row(_row_label(report, r.machine, r.section), *(_pct(r.metrics[c]) for c in cols))
    summary = report.summary()
    table.add_section()
    table.add_row("a-mean", *(_pct(summary["arithmetic mean"][c]) for c in cols))
    table.add_row("h-mean", *(_pct(summary["harmonic mean"][c]) for c in cols))
    return table


def _best_marks(values: list[float]) -> list[str]:
    finite = [v for v in values if not math.isnan(v)]
    best = max(finite) if len(finite) > 1 else None
    return [f"[bold]★ {_pct(v)}[/]" if best is not None and v == best else _pct(v) for v in values]


def comparison_table(reports: Sequence[SystemReport]) -> Table:
    """Several systems: one column per system, rows per machine and metric, best value per row ★."""
    table = Table(title="Systems compared: AUC / pAUC in % (★ = best in the row)", header_style="bold",
                  box=box.SIMPLE_HEAD)
    table.add_column("machine", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for r in reports:
        table.add_column(r.name, justify="right", no_wrap=True)
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
    """Write the reports to ``stream`` as ``table``, ``csv`` or ``json``."""
    if fmt == "csv":
        stream.write(to_csv(reports))
    elif fmt == "json":
        stream.write(json.dumps(to_json(reports), indent=2) + "\n")
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


# ---------------------------------------------------------------- one-call API

@dataclass(frozen=True)
class ReportConfig:
    """What `asd report` does: inputs, ground truth, output format and destinations."""

    submissions: tuple[str, ...] = ()  # folders, score files, or "-" for stdin
    ground_truth: Path | None = None  # official GT_DIR (wins over data)
    data: Path | None = None  # dataset root with labelled test names
    machine: str | None = None  # machine of a stdin / single-file submission
    fmt: str | None = None  # table|csv|json; None: table on a terminal, else csv
    plots: Path | None = None
    out: Path | None = None
    ground_truth_out: Path | None = None

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}.")
        if not self.submissions and self.ground_truth_out is None:
            raise ConfigError("Pass one or more submission folders (or - for stdin), or --ground-truth-out DIR.")
        if self.machine and not any(s == STDIN or Path(s).is_file() for s in self.submissions):
            raise ConfigError("--machine applies only to scores read from stdin (-) or from a single CSV file.")


def _file_format(cfg: ReportConfig, out: Path) -> str:
    if cfg.fmt is not None:
        return cfg.fmt
    return {".json": "json", ".txt": "table"}.get(out.suffix.lower(), "csv")


def run_report(
    cfg: ReportConfig, stdin_text: str | None = None, stdout: TextIO | None = None, console: Console | None = None
) -> list[SystemReport]:
    """Do what ``cfg`` asks and return the evaluated systems.

    Writes the ground-truth CSVs (``ground_truth_out``), evaluates the submissions, writes plots
    and ``out`` (atomically), renders the result on ``stdout`` (a table when it is a terminal or
    ``fmt`` says so, else CSV/JSON; nothing when only ``out`` was asked and stdout is piped) and
    puts warnings and file notices on ``console`` (stderr).
    """
    stdout = stdout if stdout is not None else sys.stdout
    console = console or stderr_console()
    truth = load_ground_truth(cfg.ground_truth, cfg.data)
    if cfg.ground_truth_out is not None:
        paths = write_ground_truth(truth, cfg.ground_truth_out)
        console.print(f"Wrote {len(paths)} ground-truth files for {len(truth.sections)} machine/section(s) "
                      f"to {cfg.ground_truth_out}", highlight=False)
    if not cfg.submissions:
        return []
    reports = evaluate_all(cfg.submissions, truth, cfg.machine, stdin_text)
    for warning in (w for r in reports for w in r.warnings):
        console.print(f"[yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
    if cfg.plots is not None:
        from asdcli.evaluate.plots import write_plots  # matplotlib is slow to import; only when asked

        paths = write_plots(reports, cfg.plots)
        console.print(f"Wrote {len(paths)} plots to {cfg.plots}", highlight=False)
    if cfg.out is not None:
        write_text_atomic(cfg.out, render_text(reports, _file_format(cfg, cfg.out)))
        console.print(f"Wrote {cfg.out}", highlight=False)
    terminal = is_terminal(stdout)
    if cfg.out is None or terminal:
        fmt = cfg.fmt if cfg.out is None and cfg.fmt else ("table" if terminal else "csv")
        render(reports, fmt, stdout)
        if fmt == "table":
            return reports
    for r in reports:
        console.print(f"{r.name}: official score {_pct(r.official_score)}", highlight=False)
    return reports


def report_submission(
    submission_dir: Path | str,
    data_root: Path | str | None = None,
    *,
    ground_truth: Path | str | None = None,
    fmt: str | None = None,
    plots_dir: Path | str | None = None,
    out: Path | str | None = None,
    stdout: TextIO | None = None,
    console: Console | None = None,
) -> SystemReport:
    """Evaluate one submission folder against the labelled test names under ``data_root`` (or the
    official CSVs in ``ground_truth``), render it and return it (``.official_score`` etc.)."""
    cfg = ReportConfig(
        submissions=(str(submission_dir),), ground_truth=None if ground_truth is None else Path(ground_truth),
        data=None if data_root is None else Path(data_root), fmt=fmt,
        plots=None if plots_dir is None else Path(plots_dir), out=None if out is None else Path(out),
    )
    return run_report(cfg, stdout=stdout, console=console)[0]
