"""The report as data: one tidy (long) table, and the evaluator's own result layout.

Tidy table, one row per value, columns :data:`COLUMNS` = system, machine, section, metric, value:

- ``(sys, fan, 00, AUC (source), 0.81)``: a machine/section's metric (every name in
  ``metrics.COLUMNS``), its clip counts (``clips``, ``anomalies``, ``target clips``) and, when the
  banks were given, its ``decision threshold``;
- ``(sys, fan, arithmetic mean | harmonic mean, <metric>, v)``: over the machine's sections;
- ``(sys, fan, all, official score, v)``: harmonic mean of the machine's AUC (source), AUC (target)
  and pAUC values;
- ``(sys, all, arithmetic mean | harmonic mean, <metric>, v)`` and ``(sys, all, all, official
  score, v)``: the same over every machine/section of the system.

Values are fractions in [0, 1] at full precision; an undefined value is empty (CSV) / ``null``
(JSON). The evaluator floors every value at machine epsilon before its harmonic mean, so a mean
over a 0 comes out as ~2.2e-16; the tidy table gives that limit as 0. ``--format official``
(:func:`official_rows`) keeps the evaluator's layout and its epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from asdcli.evaluate import metrics
from asdcli.evaluate.report import SectionResult, SystemReport

COLUMNS = ("system", "machine", "section", "metric", "value")
ALL = "all"
OFFICIAL_SCORE = "official score"
THRESHOLD = "decision threshold"
COUNTS = ("clips", "anomalies", "target clips")
# Below this a harmonic mean is the evaluator's epsilon floor (a few * 2.2e-16), i.e. 0.
_EPSILON_FLOOR = 1e-12
# The baseline's result-file columns, then AUC (all) (which the baseline does not write).
OFFICIAL_COLUMNS = tuple(c for c in metrics.COLUMNS if c != "AUC (all)") + ("AUC (all)",)


@dataclass(frozen=True)
class TidyRow:
    system: str
    machine: str
    section: str
    metric: str
    value: float  # nan: undefined

    def cells(self) -> tuple[str, str, str, str, float]:
        return (self.system, self.machine, self.section, self.metric, self.value)


def without_epsilon(value: float) -> float:
    """``value`` with the evaluator's epsilon floor of a harmonic mean shown as 0."""
    return 0.0 if 0.0 <= value < _EPSILON_FLOOR else value


def _section_rows(system: str, r: SectionResult) -> Iterator[TidyRow]:
    counts = (len(r.filenames), int(r.anomaly.sum()), int(r.target.sum()))
    for name, n in zip(COUNTS, counts):
        yield TidyRow(system, r.machine, r.section, name, float(n))
    for col in metrics.COLUMNS:
        yield TidyRow(system, r.machine, r.section, col, r.metrics[col])
    if r.threshold is not None:
        yield TidyRow(system, r.machine, r.section, THRESHOLD, r.threshold)


def _mean_rows(system: str, machine: str, means: dict[str, dict[str, float]]) -> Iterator[TidyRow]:
    for kind, values in means.items():
        for col in metrics.COLUMNS:
            yield TidyRow(system, machine, kind, col, without_epsilon(values[col]))


def tidy_rows(reports: Sequence[SystemReport]) -> list[TidyRow]:
    """Every value of every system, in a fixed order (system, machine, section, metric)."""
    rows: list[TidyRow] = []
    for report in reports:
        for machine in report.machines:
            for r in report.of_machine(machine):
                rows += _section_rows(report.name, r)
            rows += _mean_rows(report.name, machine, report.machine_summary(machine))
            score = report.machine_score(machine)["harmonic mean"]
            rows.append(TidyRow(report.name, machine, ALL, OFFICIAL_SCORE, without_epsilon(score)))
        rows += _mean_rows(report.name, ALL, report.summary())
        rows.append(TidyRow(report.name, ALL, ALL, OFFICIAL_SCORE, without_epsilon(report.official_score)))
    return rows


def format_value(row: TidyRow) -> str:
    """A value as CSV text: counts as integers, fractions at full precision, undefined as ''."""
    if math.isnan(row.value):
        return ""
    return str(int(row.value)) if row.metric in COUNTS else repr(row.value)


def json_value(row: TidyRow) -> float | int | None:
    if math.isnan(row.value):
        return None
    return int(row.value) if row.metric in COUNTS else row.value


# ---------------------------------------------------------------- the evaluator's layout


def _official_num(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.10g}"


def official_rows(report: SystemReport) -> list[list[str]]:
    """The baseline's result layout of one system: per machine a block (name line, header, one
    row per section, arithmetic/harmonic mean rows, blank line), then a summary over all machine
    types and sections, ending with the official score (epsilon floor kept)."""
    rows: list[list[str]] = []
    for machine in report.machines:
        rows += [[machine], ["section", *OFFICIAL_COLUMNS]]
        rows += [
            [r.section, *(_official_num(r.metrics[c]) for c in OFFICIAL_COLUMNS)] for r in report.of_machine(machine)
        ]
        for label, values in report.machine_summary(machine).items():
            rows.append([label, *(_official_num(values[c]) for c in OFFICIAL_COLUMNS)])
        rows.append([])
    rows.append(["summary", *OFFICIAL_COLUMNS])
    for label, values in report.summary().items():
        rows.append(
            [f"{label} over all machine types and sections", *(_official_num(values[c]) for c in OFFICIAL_COLUMNS)]
        )
    rows += [[], [OFFICIAL_SCORE, _official_num(report.official_score)]]
    return rows
