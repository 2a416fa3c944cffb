"""`asd report`: read submission folders, check them against the ground truth, compute the official
metrics (``asdcli.evaluate.metrics``) per machine/section, and aggregate them per machine and per system.

A submission folder holds, per machine and section (DCASE 2025 Task 2 format, no header)::

    anomaly_score_<machine>_section_<SS>_test.csv      filename,score   (higher = more anomalous)
    decision_result_<machine>_section_<SS>_test.csv    filename,0|1     (optional; 1 = anomaly)

Unlike the official evaluator (which sorts and aligns rows by position), every row is matched by
file name: a missing, duplicated, extra or unknown name, a non-numeric or non-finite score, or a
machine without ground truth is a DataError naming the file and the clips.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asdcli.errors import DataError
from asdcli.evaluate import metrics
from asdcli.evaluate.ground_truth import GroundTruth, SectionTruth, first_few, printable
from asdcli.evaluate.score_rows import Entry, parse_rows, read_text

# Also matches the baseline's own names, anomaly_score_DCASE2025T2fan_section_00_test_seed13711_id(0_).csv.
_SCORE_NAME = re.compile(
    r"^anomaly_score_(?:DCASE20\d\dT2)?(?P<machine>.+?)_section_(?P<section>\d+)_test(?P<tag>.*)\.csv$"
)
STDIN = "-"


@dataclass(frozen=True)
class SectionResult:
    """Metrics of one machine/section, with the aligned arrays (for plots), all (N,)."""

    machine: str
    section: str
    metrics: Mapping[str, float]
    filenames: tuple[str, ...]
    scores: np.ndarray
    anomaly: np.ndarray
    target: np.ndarray
    decisions: np.ndarray | None = None
    threshold: float | None = None  # the bank's decision threshold, when the banks were given

    def official_values(self) -> list[float]:
        return [self.metrics[c] for c in metrics.OFFICIAL_COLUMNS]


@dataclass(frozen=True)
class SystemReport:
    """Results of one submission (a "system"), sections sorted by (machine, section)."""

    name: str
    path: str
    sections: tuple[SectionResult, ...]
    warnings: tuple[str, ...] = ()

    @property
    def machines(self) -> list[str]:
        return sorted({s.machine for s in self.sections})

    @property
    def has_decisions(self) -> bool:
        return any(s.decisions is not None for s in self.sections)

    def of_machine(self, machine: str) -> list[SectionResult]:
        return [s for s in self.sections if s.machine == machine]

    @property
    def official_score(self) -> float:
        """hmean of every section's AUC (source), AUC (target) and pAUC (epsilon-floored)."""
        s = self.sections
        return metrics.official_score(
            [r.metrics["AUC (source)"] for r in s],
            [r.metrics["AUC (target)"] for r in s],
            [r.metrics["pAUC"] for r in s],
        )

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-column arithmetic and harmonic means over every machine/section."""
        return metrics.column_means(r.metrics for r in self.sections)

    def machine_summary(self, machine: str) -> dict[str, dict[str, float]]:
        """Per-column arithmetic and harmonic means over the sections of ``machine``."""
        return metrics.column_means(r.metrics for r in self.of_machine(machine))

    def machine_score(self, machine: str) -> dict[str, float]:
        """Arithmetic and harmonic mean of the machine's AUC (source), AUC (target) and pAUC values."""
        values = [v for r in self.of_machine(machine) for v in r.official_values()]
        return {"arithmetic mean": metrics.amean(values), "harmonic mean": metrics.hmean(values)}


def check_bank_folder(folder: Path) -> None:
    """DataError when the --banks folder of a submission does not exist."""
    if not folder.is_dir():
        raise DataError(f"Bank folder {folder} does not exist; pass the banks/ folder of the run (--banks DIR).")


def bank_thresholds(banks_dir: Path | str) -> dict[tuple[str, str], float]:
    """The decision threshold of every ``bank_<machine>_section_<SS>.npz`` under ``banks_dir``
    (the threshold the decision files were made with), keyed by (machine, section)."""
    from asdcli.backend.bank import bank_paths, load_bank

    folder = Path(banks_dir)
    check_bank_folder(folder)
    out = {}
    for path in bank_paths(folder):
        bank = load_bank(path)
        out[(bank.machine, bank.section)] = float(bank.threshold)
    if not out:
        raise DataError(f"{folder} holds no bank_<machine>_section_<SS>.npz file; pass the banks/ folder of the run.")
    return out


def align(entries: Sequence[Entry], truth: SectionTruth, what: str) -> np.ndarray:
    """Values of ``entries`` in the order of ``truth.filenames``: (N,) float64.

    Names may be the truth's names or their aliases. A duplicated, unknown or missing name is a
    DataError that names the clips (first few) and how many there are.
    """
    index = {n: i for i, n in enumerate(truth.filenames)}
    values = np.full(len(truth), np.nan)
    seen: dict[int, int] = {}
    dups, unknown = [], []
    for e in entries:
        i = index.get(truth.aliases.get(e.name, e.name))
        if i is None:
            unknown.append(e.name)
        elif i in seen:
            dups.append(f"{e.name} (lines {seen[i]} and {e.line})")
        else:
            seen[i] = e.line
            values[i] = e.value
    sec = f"{truth.machine} section {truth.section}"
    if dups:
        raise DataError(f"{what}: {len(dups)} clip(s) listed more than once: {first_few(dups)}; keep one row per clip.")
    if unknown:
        raise DataError(
            f"{what}: {len(unknown)} name(s) are not test clips of {sec}: {first_few(unknown)}; "
            "use the bare test file names (extra or misspelled rows are not allowed)."
        )
    missing = [truth.filenames[i] for i in range(len(truth)) if i not in seen]
    if missing:
        raise DataError(
            f"{what}: {len(missing)} of {len(truth)} test clips of {sec} have no row: {first_few(missing)}; "
            "every test clip needs exactly one row."
        )
    return values


def evaluate_section(
    truth: SectionTruth, scores: np.ndarray, decisions: np.ndarray | None = None, threshold: float | None = None
) -> SectionResult:
    """All metrics of one machine/section from aligned (N,) scores and optional 0/1 decisions."""
    d = None if decisions is None else decisions.astype(np.int8)
    values = metrics.section_metrics(truth.anomaly, scores, truth.target, d)
    return SectionResult(
        printable(truth.machine),
        truth.section,
        values,
        truth.filenames,
        scores,
        truth.anomaly,
        truth.target,
        d,
        threshold,
    )


def _undefined_warnings(results: Sequence[SectionResult], system: str) -> list[str]:
    out = []
    for r in results:
        bad = [c for c in metrics.OFFICIAL_COLUMNS + ("AUC (all)",) if math.isnan(r.metrics[c])]
        if bad:
            out.append(
                f"{system}: {', '.join(bad)} of {r.machine} section {r.section} undefined "
                "(the clips lack normals or anomalies of a domain); the official score is n/a."
            )
    return out


def _coverage_warnings(done: set[tuple[str, str]], truth: GroundTruth, system: str) -> list[str]:
    missing = sorted(set(truth.sections) - done)
    if not missing:
        return []
    return [
        (
            f"{system} has no scores for {first_few([f'{m} section {s}' for m, s in missing])}; "
            f"its official score covers only the {len(done)} machine/section(s) it has."
        )
    ]


def score_files(folder: Path) -> dict[tuple[str, str], Path]:
    """The score files of a submission folder by (machine, section) from their names (the
    baseline's names too); two for one machine/section is a DataError."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.iterdir()):
        m = _SCORE_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        key = (m["machine"], m["section"])
        if key in found:
            raise DataError(
                f"{folder} holds two score files for {key[0]} section {key[1]}: {found[key].name}, {path.name}."
            )
        found[key] = path
    return found


def score_file_key(path: Path) -> tuple[str, str] | None:
    """(machine, section) of a score file's name, or None when the name does not say."""
    m = _SCORE_NAME.match(path.name)
    return None if m is None else (m["machine"], m["section"])


def evaluate_submission(
    submission: Path | str,
    truth: GroundTruth,
    name: str | None = None,
    thresholds: Mapping[tuple[str, str], float] | None = None,
    skip_unlabelled: bool = False,
) -> SystemReport:
    """Evaluate a submission folder against ``truth``; ``thresholds`` (from :func:`bank_thresholds`)
    are recorded with each machine/section's result. With ``skip_unlabelled`` the score files of
    machines whose test names carry no labels (evaluation data next to dev data) are left out,
    with a warning naming them.

    Raises DataError when the folder holds no score file, when a machine/section has no ground
    truth, or when a score or decision file does not match the test clips exactly.
    """
    folder = Path(submission)
    if not folder.is_dir():
        raise DataError(f"Submission folder {folder} does not exist or is not a folder.")
    found = score_files(folder)
    if not found:
        raise DataError(
            f"{folder} holds no anomaly_score_<machine>_section_<SS>_test.csv file; "
            "point asd report at the folder that `asd score --submission-dir` (or `asd run`) wrote."
        )
    system = name or folder.name or str(folder)
    skipped = sorted({m for m, _ in found if m in truth.unlabelled}) if skip_unlabelled else []
    found = {k: v for k, v in found.items() if k[0] not in skipped}
    results = []
    for (machine, section), path in sorted(found.items()):
        st = truth.require(machine, section, str(path))
        scores = align(parse_rows(read_text(path), path.name), st, str(path))
        dpath = path.with_name(path.name.replace("anomaly_score_", "decision_result_", 1))
        decisions = None
        if dpath.is_file():
            decisions = align(parse_rows(read_text(dpath), dpath.name, decisions=True), st, str(dpath))
        results.append(evaluate_section(st, scores, decisions, (thresholds or {}).get((machine, section))))
    warnings = _undefined_warnings(results, system) + _coverage_warnings(set(found), truth, system)
    if skipped:
        warnings.append(
            f"{system}: {', '.join(skipped)} not evaluated: their test file names carry no labels "
            "(evaluation data); their score files are the challenge submission."
        )
    return SystemReport(system, str(folder), tuple(results), tuple(warnings))


def evaluate_stream(text: str, machine: str, truth: GroundTruth, name: str = "stdin") -> SystemReport:
    """Evaluate one scores CSV (or JSON lines) of a single machine, e.g. read from stdin.

    Rows are assigned to the machine's sections by file name; a section without any row is left
    out (with a warning), any name of no section of ``machine`` is a DataError.
    """
    if not machine:
        raise DataError("Scores from stdin need the machine name: add --machine NAME.")
    sections = truth.of_machine(machine)
    if not sections:
        truth.require(machine, None, f"--machine {machine}")
    entries = parse_rows(text, name)
    if not entries:
        raise DataError(f"No score rows in {name}; pipe 'filename,score' lines (e.g. from `asd score`).")
    owner = {n: st for st in sections for n in (*st.filenames, *st.aliases)}
    unknown = [e.name for e in entries if e.name not in owner]
    if unknown:
        raise DataError(f"{name}: {len(unknown)} name(s) are not test clips of {machine}: {first_few(unknown)}.")
    results, done = [], set()
    for st in sections:
        rows = [e for e in entries if owner[e.name] is st]
        if rows:
            results.append(evaluate_section(st, align(rows, st, f"{name} ({machine} section {st.section})")))
            done.add((st.machine, st.section))
    sub = GroundTruth({k: v for k, v in truth.sections.items() if k[0] == machine}, truth.origin)
    warnings = _undefined_warnings(results, name) + _coverage_warnings(done, sub, name)
    return SystemReport(name, STDIN, tuple(results), tuple(warnings))


def system_names(paths: Sequence[str], given: Sequence[str] = ()) -> list[str]:
    """Short unique display names: the given ones (empty: none given), else folder names, with
    the path as given where one name stands for several paths, and `` (2)``, `` (3)``, ... where
    a name still repeats (one submission given twice)."""
    given = list(given) or [""] * len(paths)
    names = [printable(g or ("stdin" if p == STDIN else (Path(p).name or str(p)))) for g, p in zip(given, paths)]
    paths_of = {n: {p for m, p in zip(names, paths) if m == n} for n in names}
    names = [f"{n} ({printable(p)})" if len(paths_of[n]) > 1 and p != n else n for n, p in zip(names, paths)]
    unique: list[str] = []
    for n in names:
        label, k = n, 1
        while label in unique or (k > 1 and label in names):
            k += 1
            label = f"{n} ({k})"
        unique.append(label)
    return unique


def evaluate_all(
    submissions: Sequence[str],
    truth: GroundTruth,
    machine: str | None = None,
    stdin_text: str | None = None,
    names: Sequence[str] = (),
    thresholds: Sequence[Mapping[tuple[str, str], float] | None] = (),
) -> list[SystemReport]:
    """Evaluate several submissions: folders, single score files, or ``-`` (``stdin_text``,
    one machine named by ``machine``); ``names`` and ``thresholds`` are one per submission."""
    if not submissions:
        raise DataError("No submission given; pass one or more submission folders (or - for stdin).")
    if list(submissions).count(STDIN) > 1:
        raise DataError("stdin (-) can be given only once.")
    thresholds = list(thresholds) or [None] * len(submissions)
    reports = []
    for sub, name, thr in zip(submissions, system_names(submissions, names), thresholds):
        if sub == STDIN:
            report = evaluate_stream(stdin_text or "", machine or "", truth, "stdin")
        elif Path(sub).is_file():
            report = evaluate_score_file(Path(sub), truth, machine)
        else:
            report = evaluate_submission(sub, truth, name, thr)
        reports.append(
            report if report.name == name else SystemReport(name, report.path, report.sections, report.warnings)
        )
    return reports


def evaluate_score_file(path: Path, truth: GroundTruth, machine: str | None = None) -> SystemReport:
    """Evaluate one scores CSV given as a file; the machine comes from an official file name
    (``anomaly_score_<machine>_section_<SS>_test.csv``) or from ``machine``."""
    m = _SCORE_NAME.match(path.name)
    machine = machine or (m["machine"] if m else "")
    if not machine:
        raise DataError(f"Cannot tell the machine of {path} from its name; add --machine NAME.")
    report = evaluate_stream(read_text(path), machine, truth, path.name)
    return SystemReport(report.name, str(path), report.sections, report.warnings)
