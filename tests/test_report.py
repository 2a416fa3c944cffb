"""asd report: ground truth, submission validation, aggregation, CSV/JSON/table output, plots."""

import csv
import html
import io
import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from asdcli.cli.main import app
from asdcli.errors import DataError
from asdcli.evaluate import metrics
from asdcli.evaluate.ground_truth import ground_truth_from_data, read_ground_truth, write_ground_truth
from asdcli.evaluate.render import to_json
from asdcli.evaluate.report import evaluate_submission, parse_rows
from asdcli.evaluate.report_command import ReportConfig, report_submission, run_report

runner = CliRunner()
N = 5  # clips per (domain, label) group


def _names(n: int = N) -> list[tuple[str, int, int]]:
    """(file name, anomaly, target) of a test folder in dev form."""
    out = []
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            for i in range(n):
                name = f"section_00_{domain}_test_{label}_{i:04d}_vel_{i}_loc_A.wav"
                out.append((name, int(label == "anomaly"), int(domain == "target")))
    return out


def _make_data(root: Path, machines: tuple[str, ...] = ("fan", "valve")) -> Path:
    for m in machines:
        folder = root / m / "test"
        folder.mkdir(parents=True)
        for name, _, _ in _names():
            (folder / name).touch()  # the report only reads names
    return root


def _scores(machine: str, shift: float = 1.0) -> dict[str, float]:
    rng = np.random.default_rng(zlib.crc32(machine.encode()))  # stable across runs (hash() is salted)
    return {n: float(rng.normal() + shift * a - 0.3 * t) for n, a, t in _names()}


def _write_sub(
    folder: Path, machines: tuple[str, ...] = ("fan", "valve"), shift: float = 1.0, decisions: bool = True
) -> dict[str, dict[str, float]]:
    folder.mkdir(parents=True, exist_ok=True)
    all_scores = {}
    for m in machines:
        s = _scores(m, shift)
        all_scores[m] = s
        (folder / f"anomaly_score_{m}_section_00_test.csv").write_text("".join(f"{n},{v}\n" for n, v in s.items()))
        if decisions:
            (folder / f"decision_result_{m}_section_00_test.csv").write_text(
                "".join(f"{n},{int(v > 0.5)}\n" for n, v in s.items())
            )
    return all_scores


def _expected(scores: dict[str, float]) -> dict[str, float]:
    """Independent computation of the official values with plain masks and sklearn."""
    names = _names()
    y = np.array([a for _, a, _ in names])
    t = np.array([tg for _, _, tg in names])
    s = np.array([scores[n] for n, _, _ in names])
    src, tgt = (t == 0) | (y == 1), (t == 1) | (y == 1)
    return {
        "AUC (source)": roc_auc_score(y[src], s[src]),
        "AUC (target)": roc_auc_score(y[tgt], s[tgt]),
        "pAUC": roc_auc_score(y, s, max_fpr=0.1),
        "AUC (all)": roc_auc_score(y, s),
    }


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, dict[str, float]]]:
    data = _make_data(tmp_path / "data")
    scores = _write_sub(tmp_path / "runA")
    return data, tmp_path / "runA", scores


# ---------------------------------------------------------------- ground truth


def test_ground_truth_from_dev_names(tmp_path: Path) -> None:
    truth = ground_truth_from_data(_make_data(tmp_path / "data"))
    assert truth.machines == ["fan", "valve"]
    st = truth.sections[("fan", "00")]
    assert len(st) == 4 * N and list(st.filenames) == sorted(st.filenames)
    expected = {n: (a, t) for n, a, t in _names()}
    assert all((int(a), int(t)) == expected[n] for n, a, t in zip(st.filenames, st.anomaly, st.target))


def test_ground_truth_writer_round_trip(tmp_path: Path) -> None:
    truth = ground_truth_from_data(_make_data(tmp_path / "data"))
    paths = write_ground_truth(truth, tmp_path / "gt")
    assert len(paths) == 3 * 2
    assert (
        (tmp_path / "gt/ground_truth_domain/ground_truth_fan_section_00_test.csv")
        .read_text()
        .startswith("section_00_source_test_anomaly_0000_vel_0_loc_A.wav,0\n")
    )
    back = read_ground_truth(tmp_path / "gt")
    for key, st in truth.sections.items():
        b = back.sections[key]
        assert b.filenames == st.filenames and b.labelled == st.labelled
        assert (b.anomaly == st.anomaly).all() and (b.target == st.target).all()
    assert not list((tmp_path / "gt").rglob("*.tmp"))


def test_ground_truth_out_cli_then_report_with_it(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    res = runner.invoke(app, ["report", "--ground-truth-out", str(tmp_path / "gt"), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "Wrote 6 ground-truth files" in res.output
    a = runner.invoke(app, ["report", str(sub), "--ground-truth", str(tmp_path / "gt"), "-f", "json"])
    b = runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "json"])
    assert a.exit_code == b.exit_code == 0
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_ground_truth_out_never_overwrites_files_with_other_content(setup, tmp_path: Path) -> None:
    """The official evaluator's own ground truth (or any other file) under the same name is kept:
    a re-run into the same folder is fine, a file with other content is one error and nothing moves."""
    data, _, _ = setup
    gt = tmp_path / "gt"
    args = ["report", "--ground-truth-out", str(gt), "--data", str(data)]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # the same files again: nothing to change
    theirs = sorted(gt.rglob("*.csv"))[0]
    theirs.write_text("section_00_0000.wav,1\n")
    before = {p: p.read_bytes() for p in gt.rglob("*.csv")}
    (sorted(gt.rglob("*.csv"))[-1]).unlink()  # a missing file is not written either when one is refused
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and str(theirs) in res.output
    assert "will not overwrite" in res.output
    assert {p: p.read_bytes() for p in gt.rglob("*.csv")} == {p: b for p, b in before.items() if p.exists()}


def test_anonymised_ground_truth_accepts_labelled_names_via_attributes(tmp_path: Path) -> None:
    gt = tmp_path / "gt"
    names = _names()
    for sub in ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes"):
        (gt / sub).mkdir(parents=True)
    f = "ground_truth_fan_section_00_test.csv"
    anon = [f"section_00_{i:04d}.wav" for i in range(len(names))]
    (gt / "ground_truth_data" / f).write_text("".join(f"{a},{y}\n" for a, (_, y, _) in zip(anon, names)))
    (gt / "ground_truth_domain" / f).write_text("".join(f"{a},{t}\n" for a, (_, _, t) in zip(anon, names)))
    (gt / "ground_truth_attributes" / f).write_text("".join(f"{a},{n[:-4]},{n}\n" for a, (n, _, _) in zip(anon, names)))
    scores = _scores("fan")
    sub = tmp_path / "sub"
    sub.mkdir()
    # half the rows by anonymised name, half by labelled name: both resolve to the same clips
    rows = [f"{anon[i] if i % 2 else n},{scores[n]}\n" for i, (n, _, _) in enumerate(names)]
    (sub / "anomaly_score_fan_section_00_test.csv").write_text("".join(rows))
    report = evaluate_submission(sub, read_ground_truth(gt))
    assert report.sections[0].metrics["AUC (source)"] == pytest.approx(_expected(scores)["AUC (source)"])


# ---------------------------------------------------------------- CLI output


def _tidy(text: str) -> dict[tuple[str, str, str, str], str]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["system", "machine", "section", "metric", "value"]
    assert all(len(r) == 5 for r in rows)
    return {tuple(r[:4]): r[4] for r in rows[1:]}  # type: ignore[misc]


def test_cli_csv_is_one_tidy_table_by_default_when_piped(setup) -> None:
    data, sub, scores = setup
    res = runner.invoke(app, ["report", str(sub), "--data", str(data)])
    assert res.exit_code == 0, res.output
    table = _tidy(res.stdout)
    exp = _expected(scores["fan"])
    for col in ("AUC (source)", "AUC (target)", "pAUC", "AUC (all)"):
        assert float(table[("runA", "fan", "00", col)]) == pytest.approx(exp[col], abs=1e-12)
    assert table[("runA", "fan", "00", "clips")] == str(4 * N)
    assert table[("runA", "fan", "00", "anomalies")] == str(2 * N)
    official = metrics.hmean([_expected(scores[m])[c] for c in metrics.OFFICIAL_COLUMNS for m in ("fan", "valve")])
    assert float(table[("runA", "all", "all", "official score")]) == pytest.approx(official, abs=1e-12)
    fan = metrics.hmean([exp[c] for c in metrics.OFFICIAL_COLUMNS])
    assert float(table[("runA", "fan", "all", "official score")]) == pytest.approx(fan, abs=1e-12)
    assert ("runA", "fan", "00", "decision threshold") not in table  # no banks given: no guessed threshold


def test_cli_json_has_the_csv_fields_in_the_csv_order(setup) -> None:
    data, sub, _ = setup
    as_csv = runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "csv"]).stdout
    res = runner.invoke(app, ["report", str(sub), "--data", str(data), "--format", "json"])
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    rows = list(csv.reader(io.StringIO(as_csv)))
    assert [list(r) for r in records] == [rows[0]] * len(records)
    assert [[str(v) if v is not None else "" for v in r.values()] for r in records] == rows[1:]


def _bank(folder: Path, machine: str, seed: int) -> float:
    from asdcli.backend.bank import bank_filename, save_bank
    from asdcli.backend.bank_fit import build_bank

    rng = np.random.default_rng(seed)
    bank = build_bank(
        rng.normal(size=(12, 4)),
        np.array(["source"] * 12),
        np.array([f"t{i}.wav" for i in range(12)]),
        machine=machine,
        section="00",
    )
    save_bank(folder / bank_filename(machine, "00"), bank)
    _decide_with(folder.parent / "submission", machine, bank.threshold)
    return bank.threshold


def _decide_with(submission: Path, machine: str, threshold: float) -> None:
    """Rewrite the machine's decision file (if any) as `asd score` decides with ``threshold``: the
    decisions are checked against the bank's threshold."""
    decisions = submission / f"decision_result_{machine}_section_00_test.csv"
    if decisions.is_file():
        scores = (submission / f"anomaly_score_{machine}_section_00_test.csv").read_text().splitlines()
        limit = float(np.float32(threshold))
        decisions.write_text("".join(f"{n},{int(float(v) > limit)}\n" for n, v in (r.rsplit(",", 1) for r in scores)))


def test_thresholds_come_from_the_banks_of_the_run(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    run = tmp_path / "my-run"
    _write_sub(run / "submission")
    (run / "banks").mkdir()
    thresholds = {m: _bank(run / "banks", m, i) for i, m in enumerate(("fan", "valve"))}
    res = runner.invoke(app, ["report", str(run / "submission"), "--data", str(data), "-f", "csv"])
    assert res.exit_code == 0, res.output
    table = _tidy(res.stdout)
    for m, thr in thresholds.items():
        assert float(table[("my-run (frozen BEATs)", m, "00", "decision threshold")]) == pytest.approx(thr, rel=1e-12)
    named = runner.invoke(
        app,
        [
            "report",
            str(run / "submission"),
            "--data",
            str(data),
            "-f",
            "json",
            "--name",
            "frozen BEATs",
            "--banks",
            str(run / "banks"),
        ],
    )
    records = json.loads(named.stdout)
    assert {r["system"] for r in records} == {"frozen BEATs"}
    assert [r["value"] for r in records if r["metric"] == "decision threshold"] == pytest.approx(
        list(thresholds.values()), rel=1e-12
    )


def test_official_format_keeps_the_evaluator_layout_and_epsilon(setup) -> None:
    data, sub, scores = setup
    flipped = {n: -v for n, v in scores["fan"].items()}
    for n, a, _ in _names():
        flipped[n] = float(-a)  # every anomaly below every normal: AUC 0
    _fan_file(sub).write_text("".join(f"{n},{v}\n" for n, v in flipped.items()))
    official = runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "official"]).stdout.splitlines()
    assert official[:2] == [
        "fan",
        "section,AUC (source),AUC (target),pAUC,pAUC (source),pAUC (target),"
        "precision (source),precision (target),recall (source),recall (target),"
        "F1 score (source),F1 score (target),AUC (all)",
    ]
    values = [_expected(s)[c] for s in (flipped, scores["valve"]) for c in metrics.OFFICIAL_COLUMNS]
    assert min(values) == 0.0
    evaluator = scipy.stats.hmean(np.maximum(values, sys.float_info.epsilon))  # the evaluator's floor
    assert official[-1] == f"official score,{evaluator:.10g}" and evaluator < 1e-15
    tidy = _tidy(runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "csv"]).stdout)
    assert tidy[("runA", "all", "all", "official score")] == "0.0"
    table = runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "table"]).stdout
    assert "e-1" not in table and "0.00" in table


def test_cli_compares_systems_and_marks_the_best(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    _write_sub(tmp_path / "runB", shift=3.0)  # clearly better
    res = runner.invoke(app, ["report", str(sub), str(tmp_path / "runB"), "--data", str(data), "-f", "table"])
    assert res.exit_code == 0, res.output
    official_line = next(line for line in res.stdout.splitlines() if "official score" in line)
    assert official_line.count("★") == 1 and official_line.rstrip().split("★")[1].strip() != ""
    assert official_line.index("★") > official_line.index(official_line.split()[3])  # runB column holds ★
    csv_res = runner.invoke(app, ["report", str(sub), str(tmp_path / "runB"), "--data", str(data), "-f", "csv"])
    assert {k[0] for k in _tidy(csv_res.stdout)} == {"runA", "runB"}


def test_cli_stdin_pipe(setup) -> None:
    data, _, scores = setup
    text = "".join(f"{n},{v}\n" for n, v in scores["fan"].items())
    res = runner.invoke(app, ["report", "-", "--machine", "fan", "--data", str(data), "-f", "json"], input=text)
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    assert {r["machine"] for r in records} == {"fan", "all"} and {r["system"] for r in records} == {"stdin"}
    exp = _expected(scores["fan"])
    score = next(r["value"] for r in records if (r["machine"], r["metric"]) == ("all", "official score"))
    assert score == pytest.approx(metrics.hmean([exp[c] for c in metrics.OFFICIAL_COLUMNS]))


def test_names_with_comma_quote_newline_and_a_bom_round_trip(tmp_path: Path) -> None:
    names = [
        ("section_00_source_test_normal_0000_a,b.wav", 0, 0),
        ('section_00_source_test_anomaly_0000_q"x.wav', 1, 0),
        ("section_00_target_test_normal_0000_line\nbreak.wav", 0, 1),
        ("section_00_target_test_anomaly_0000_ok.wav", 1, 1),
    ]
    gt = tmp_path / "gt"
    for sub in ("ground_truth_data", "ground_truth_domain"):
        (gt / sub).mkdir(parents=True)
    with open(
        gt / "ground_truth_data/ground_truth_fan_section_00_test.csv", "w", newline="", encoding="utf-8-sig"
    ) as f:
        csv.writer(f).writerows((n, a) for n, a, _ in names)
    with open(gt / "ground_truth_domain/ground_truth_fan_section_00_test.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows((n, t) for n, _, t in names)
    sub = tmp_path / "sub"
    sub.mkdir()
    with open(sub / "anomaly_score_fan_section_00_test.csv", "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows((n, 0.1 + a) for n, a, _ in names)
    res = runner.invoke(app, ["report", str(sub), "--ground-truth", str(gt), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert _tidy(res.stdout)[("sub", "fan", "00", "AUC (all)")] == "1.0"
    back = read_ground_truth(gt)
    write_ground_truth(back, tmp_path / "gt2")
    assert read_ground_truth(tmp_path / "gt2").sections[("fan", "00")].filenames == tuple(
        sorted(n for n, _, _ in names)
    )


@pytest.mark.parametrize("target", ["score", "gt"])
def test_out_that_is_an_input_is_an_error(setup, tmp_path: Path, target: str) -> None:
    data, sub, _ = setup
    runner.invoke(app, ["report", "--ground-truth-out", str(tmp_path / "gt"), "--data", str(data)])
    victim = _fan_file(sub) if target == "score" else next((tmp_path / "gt").rglob("*.csv"))
    before = victim.read_bytes()
    msg = _error([str(sub), "--ground-truth", str(tmp_path / "gt"), "--out", str(victim)])
    assert "is one of the inputs" in msg and victim.read_bytes() == before


def test_stdin_accepts_header_and_jsonl(setup) -> None:
    _, _, scores = setup
    csv_rows = parse_rows("filename,score\n" + "".join(f"{n},{v}\n" for n, v in scores["fan"].items()), "x")
    jsonl = parse_rows("".join(json.dumps({"filename": n, "score": v}) + "\n" for n, v in scores["fan"].items()), "y")
    assert [(e.name, e.value) for e in csv_rows] == [(e.name, e.value) for e in jsonl] == list(scores["fan"].items())


def test_out_file_and_library_api(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    out = tmp_path / "result.json"
    stdout = io.StringIO()
    report = report_submission(sub, data, out=out, stdout=stdout)
    records = json.loads(out.read_text())
    assert records[-1] == {
        "system": "runA",
        "machine": "all",
        "section": "all",
        "metric": "official score",
        "value": pytest.approx(report.official_score),
    }
    assert stdout.getvalue() == ""  # not a terminal and only --out asked: stdout stays clean
    table = io.StringIO()
    report_submission(sub, data, fmt="table", stdout=table)
    assert "official score" in table.getvalue()


def test_missing_section_and_undefined_metrics_warn(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    _write_sub(tmp_path / "sub", machines=("fan",))
    for p in (data / "valve" / "test").glob("*target_test_normal*"):
        p.unlink()  # valve has no target normals: AUC (target) undefined
    _write_sub(tmp_path / "sub2", machines=("fan",))
    res = runner.invoke(app, ["report", str(tmp_path / "sub"), "--data", str(data), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert "no scores for valve section 00" in res.output
    truth = ground_truth_from_data(data)
    st = truth.sections[("valve", "00")]
    sub = tmp_path / "sub3"
    sub.mkdir()
    (sub / "anomaly_score_valve_section_00_test.csv").write_text(
        "".join(f"{n},{i}\n" for i, n in enumerate(st.filenames))
    )
    report = evaluate_submission(sub, truth)
    assert np.isnan(report.sections[0].metrics["AUC (target)"]) and np.isnan(report.official_score)
    assert any("undefined" in w for w in report.warnings)


# ---------------------------------------------------------------- errors


def _fan_file(sub: Path) -> Path:
    return sub / "anomaly_score_fan_section_00_test.csv"


def _error(args: list[str], input: str | None = None) -> str:
    res = runner.invoke(app, ["report", *args], input=input)
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and "Traceback" not in res.output
    return " ".join(res.output.split())


def test_error_missing_rows(setup) -> None:
    data, sub, _ = setup
    lines = _fan_file(sub).read_text().splitlines(keepends=True)
    _fan_file(sub).write_text("".join(lines[3:]))
    msg = _error([str(sub), "--data", str(data)])
    assert "3 of 20 test clips of fan section 00 have no row" in msg
    assert lines[0].split(",")[0] in msg


def test_error_duplicated_row(setup) -> None:
    data, sub, _ = setup
    text = _fan_file(sub).read_text()
    _fan_file(sub).write_text(text + text.splitlines(keepends=True)[1])
    msg = _error([str(sub), "--data", str(data)])
    assert "1 clip(s) listed more than once" in msg and "(lines 2 and 21)" in msg


def test_error_extra_or_unknown_names(setup) -> None:
    data, sub, _ = setup
    extra = "".join(f"section_00_source_test_normal_{900 + i:04d}_x_1.wav,0.5\n" for i in range(7))
    _fan_file(sub).write_text(_fan_file(sub).read_text() + extra)
    msg = _error([str(sub), "--data", str(data)])
    assert "7 name(s) are not test clips of fan section 00" in msg
    assert "section_00_source_test_normal_0900_x_1.wav" in msg and "and 2 more" in msg


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", "", "1_000", "\u0661\u0662", "\uff11", "0x1p-3"])
def test_error_non_numeric_scores(setup, bad: str) -> None:
    """Also Python-only number forms (float() reads "1_000" and Arabic-Indic digits): the official
    evaluator would not, and `asd package` would upload them as written."""
    data, sub, _ = setup
    lines = _fan_file(sub).read_text().splitlines(keepends=True)
    lines[4] = lines[4].split(",")[0] + f",{bad}\n"
    _fan_file(sub).write_text("".join(lines))
    msg = _error([str(sub), "--data", str(data)])
    assert "anomaly_score_fan_section_00_test.csv line 5" in msg and "not a finite number" in msg


def test_plain_decimal_scores_in_every_form_are_read() -> None:
    from asdcli.evaluate.score_rows import parse_rows

    forms = ["0.5", "-.5", "+2.", "1e-3", "1.5E+02", " 7 ", "0"]
    rows = parse_rows("".join(f"c{i}.wav,{v}\n" for i, v in enumerate(forms)), "scores")
    assert [r.value for r in rows] == [float(v) for v in forms]


def test_error_bad_decision(setup) -> None:
    data, sub, _ = setup
    path = sub / "decision_result_fan_section_00_test.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].split(",")[0] + ",2\n"
    path.write_text("".join(lines))
    assert "a decision must be 0 or 1" in _error([str(sub), "--data", str(data)])


def test_error_machine_without_ground_truth(setup) -> None:
    data, sub, _ = setup
    (sub / "anomaly_score_pump_section_00_test.csv").write_text("a.wav,1\n")
    assert "no ground truth for pump section 00" in _error([str(sub), "--data", str(data)])


def test_error_unlabelled_eval_data(setup, tmp_path: Path) -> None:
    _, sub, _ = setup
    folder = tmp_path / "eval" / "fan" / "test"
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"section_00_{i:04d}.wav").touch()
    msg = _error([str(sub), "--data", str(tmp_path / "eval")])
    assert "have no labels" in msg and "--ground-truth" in msg


def test_error_empty_folder_and_no_ground_truth(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    (tmp_path / "empty").mkdir()
    assert "holds no anomaly_score_" in _error([str(tmp_path / "empty"), "--data", str(data)])
    assert "No ground truth" in _error([str(sub)])
    assert "--machine NAME" in _error(["-", "--data", str(data)], input="a.wav,1\n")
    usage = runner.invoke(app, ["report", "--data", str(data)])  # a usage error: exit 2
    assert usage.exit_code == 2 and "Pass one or more submission folders" in usage.stderr, usage.output


def test_baseline_file_names_are_recognised(setup) -> None:
    data, sub, scores = setup
    for p in sorted(sub.iterdir()):
        p.rename(
            p.with_name(p.name.replace("_fan_", "_DCASE2025T2fan_").replace("_test.csv", "_test_seed13711_id(0_).csv"))
        )
    report = evaluate_submission(sub, ground_truth_from_data(data))
    fan = report.of_machine("fan")[0]
    assert fan.decisions is not None
    assert fan.metrics["AUC (target)"] == pytest.approx(_expected(scores["fan"])["AUC (target)"])


def test_error_messages_from_library(setup) -> None:
    data, sub, _ = setup
    with pytest.raises(DataError, match="does not exist"):
        run_report(ReportConfig(submissions=(str(sub / "nope"),), data=data), stdout=io.StringIO())


# ---------------------------------------------------------------- plots


def test_plots_that_cannot_be_written_leave_no_empty_folder(tmp_path: Path, monkeypatch) -> None:
    import asdcli.evaluate.plots as plots
    from asdcli.errors import AsdError

    def full_disk(path, data) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as the real atomic write does first
        raise AsdError(f"Cannot write {path}: No space left on device.")

    monkeypatch.setattr(plots, "write_bytes_atomic", full_disk)
    data = _make_data(tmp_path / "data", machines=("fan",))
    _write_sub(tmp_path / "runA", machines=("fan",))
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for out, survives in ((tmp_path / "plots", False), (keep, True)):
        res = runner.invoke(app, ["report", str(tmp_path / "runA"), "--data", str(data), "--plots", str(out)])
        assert res.exit_code == 1 and "No space left" in res.output
        assert out.exists() == survives
    assert (keep / "notes.txt").read_text() == "mine" and sorted(keep.iterdir()) == [keep / "notes.txt"]


def test_plots_written_and_non_empty(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", machines=("fan",))
    _write_sub(tmp_path / "runA", machines=("fan",))
    _write_sub(tmp_path / "runB", machines=("fan",), shift=2.0, decisions=False)
    res = runner.invoke(
        app,
        [
            "report",
            str(tmp_path / "runA"),
            str(tmp_path / "runB"),
            "--data",
            str(data),
            "--plots",
            str(tmp_path / "plots"),
            "-f",
            "csv",
        ],
    )
    assert res.exit_code == 0, res.output
    pngs = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in (tmp_path / "plots").rglob("*.png"))
    assert pngs == [
        "comparison.png",
        "runA/fan_section_00.png",
        "runA/summary.png",
        "runB/fan_section_00.png",
        "runB/summary.png",
    ]
    for p in (tmp_path / "plots").rglob("*.png"):
        blob = p.read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000


def test_system_names_differing_in_punctuation_get_their_own_plot_folders(tmp_path: Path) -> None:
    # "dev (a, b)" and "dev (a; b)" both make the folder name dev_a_b: each gets its label's hash
    # appended, so neither system's plots overwrite the other's (also in the HTML page)
    import hashlib

    data = _make_data(tmp_path / "data", machines=("fan",))
    _write_sub(tmp_path / "runA", machines=("fan",))
    _write_sub(tmp_path / "runB", machines=("fan",), shift=2.0)
    names = ("dev (a, b)", "dev (a; b)")
    plots, page = tmp_path / "plots", tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(tmp_path / "runA"), str(tmp_path / "runB"), "--data", str(data),
                              "--name", names[0], "--name", names[1], "--plots", str(plots), "--html", str(page),
                              "-f", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    folders = [f"dev_a_b-{hashlib.sha256(n.encode()).hexdigest()[:8]}" for n in names]
    pngs = sorted(p.relative_to(plots).as_posix() for p in plots.rglob("*.png"))
    assert pngs == sorted(
        ["comparison.png", *(f"{f}/{n}" for f in folders for n in ("fan_section_00.png", "summary.png"))]
    )
    assert (plots / folders[0] / "summary.png").read_bytes() != (plots / folders[1] / "summary.png").read_bytes()
    html = page.read_text()
    for f in folders:
        assert html.count(f"<figcaption>{f}/") == 2


def test_plot_names_are_unique_whatever_the_labels() -> None:
    from asdcli.evaluate.plots import unique_names

    assert unique_names(["runA", "runB"]) == ["runA", "runB"]  # names that differ stay as they were
    fan, Fan = unique_names(["fan", "Fan"])  # one file on a case-insensitive file system
    assert fan.startswith("fan-") and Fan.startswith("Fan-") and fan.lower() != Fan.lower()
    assert unique_names([".."]) == ["system"]  # never a folder above --plots
    assert unique_names(["comparison.png", "x"], reserved=("comparison.png",))[0].startswith("comparison.png-")


def test_json_has_no_nan(setup) -> None:
    data, sub, _ = setup
    (sub / "decision_result_fan_section_00_test.csv").unlink()
    doc = to_json([evaluate_submission(sub, ground_truth_from_data(data))])
    json.dumps(doc, allow_nan=False)  # raises on NaN
    assert {"system": "runA", "machine": "fan", "section": "00", "metric": "precision (source)", "value": None} in doc


# ---------------------------------------------------------------- HTML, rendered by a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a test copy of the page only: the page itself has no script. Lists what the browser
# decoded, so the test checks what a reader sees, not only the file.
_PROBE = """<script>
const imgs = [...document.images];
document.body.setAttribute("data-probe", JSON.stringify({
  images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 300).length,
  tables: document.tables ? document.tables.length : document.querySelectorAll("table").length,
  text: document.body.innerText}));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package `chromium`)")
def test_html_page_renders_in_a_headless_browser(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data")
    thresholds = []
    for name, shift in (("frozen", 1.0), ("lora", 3.0)):
        _write_sub(tmp_path / name / "submission", shift=shift)
        (tmp_path / name / "banks").mkdir()
        thresholds += [_bank(tmp_path / name / "banks", m, i) for i, m in enumerate(("fan", "valve"))]
    page = tmp_path / "report.html"
    res = runner.invoke(
        app,
        [
            "report",
            str(tmp_path / "frozen/submission"),
            str(tmp_path / "lora/submission"),
            "--data",
            str(data),
            "--html",
            str(page),
            "-f",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "http" not in text.split("<body>")[1]  # self-contained, nothing fetched
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    # Its own profile: the default one lives in $HOME, which may be unwritable or in use by another browser.
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom"]  # fmt: skip
    try:
        blank = subprocess.run([*browser, "about:blank"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{CHROMIUM} did not render a blank page within 120 s here")
    if blank.returncode != 0 or "<body" not in blank.stdout:
        pytest.skip(f"{CHROMIUM} cannot render here: {blank.stderr.strip()[-300:]}")
    shown_page = subprocess.run([*browser, probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert shown_page.returncode == 0, shown_page.stderr[-2000:]
    dom = shown_page.stdout
    seen = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    assert seen["images"] == 7 and seen["decoded"] == 7  # 2 systems x (2 sections + summary) + comparison
    assert seen["tables"] == 4  # side by side, every value, one per system
    records = json.loads(res.stdout)
    score = {r["system"]: r["value"] for r in records if (r["machine"], r["metric"]) == ("all", "official score")}
    shown = seen["text"]
    for system, value in score.items():
        assert f"{system}: official score {100 * value:.2f} %" in shown
    assert "What the numbers mean" in shown and "frozen (frozen BEATs)\tlora (frozen BEATs)" in shown  # side by side
    assert all(f"{t:.4g}" in shown for t in thresholds)


def test_histograms_adapt_bins_show_integer_counts_and_a_threshold_beyond_every_score(setup) -> None:
    from asdcli.evaluate.plots import histogram_edges, section_figure

    assert len(histogram_edges(np.arange(8.0), None, 8)) - 1 == 4  # few clips: few bins
    assert len(histogram_edges(np.arange(200.0), None, 100)) - 1 == 10  # ~sqrt(clips)
    assert len(histogram_edges(np.arange(10_000.0), None, 5000)) - 1 == 30
    data, sub, _ = setup
    report = evaluate_submission(sub, ground_truth_from_data(data), thresholds={("fan", "00"): 99.0})
    fan = report.of_machine("fan")[0]
    assert fan.scores.max() < 99.0  # every clip judged normal: the case the line must explain
    fig = section_figure(report, fan)
    fig.canvas.draw()
    for ax in fig.axes[1:]:
        assert any(list(line.get_xdata()) == [99.0, 99.0] for line in ax.lines)
        assert ax.get_xlim()[1] >= 99.0
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert all(float(t).is_integer() for t in ticks)
        legend = ax.get_legend()
        assert legend is not None and "0 of 10 flagged" in " ".join(t.get_text() for t in legend.get_texts())
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.y1 <= area.y0  # the legend sits below the axes, not over the bars


def test_dev_and_eval_under_one_root_report_the_dev_machines_only(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "root" / "dev_data" / "raw", machines=("fan",))
    eval_test = tmp_path / "root" / "eval_data" / "raw" / "ToyPet" / "test"
    eval_test.mkdir(parents=True)
    for i in range(4):
        (eval_test / f"section_00_{i:04d}.wav").touch()
    sub = tmp_path / "run" / "submission"
    scores = _write_sub(sub, machines=("fan",))
    (sub / "anomaly_score_ToyPet_section_00_test.csv").write_text(
        "".join(f"section_00_{i:04d}.wav,{i}\n" for i in range(4))
    )
    truth = ground_truth_from_data(tmp_path / "root")
    assert truth.machines == ["fan"] and truth.unlabelled == ("ToyPet",)
    with pytest.raises(DataError, match="no labels"):
        evaluate_submission(sub, truth)  # asd report on the mixed folder: names the cause
    report = evaluate_submission(sub, truth, skip_unlabelled=True)
    assert report.machines == ["fan"]
    assert report.sections[0].metrics["AUC (source)"] == pytest.approx(_expected(scores["fan"])["AUC (source)"])
    assert any("ToyPet not evaluated" in w and "challenge submission" in w for w in report.warnings)
    assert data.is_dir()


def test_html_page_without_a_browser(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    _write_sub(tmp_path / "b<&>", shift=3.0)
    page = tmp_path / "r.html"
    res = runner.invoke(
        app,
        [
            "report",
            str(sub),
            str(tmp_path / "b<&>"),
            "--data",
            str(data),
            "--html",
            str(page),
            "-o",
            str(tmp_path / "r.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    text = page.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == 7 and "<script" not in text
    assert "b&lt;&amp;&gt;" in text and "b<&>" not in text  # names escaped


def test_run_summary_is_one_compact_line(setup) -> None:
    from asdcli.evaluate.render import run_summary

    data, sub, scores = setup
    report = evaluate_submission(sub, ground_truth_from_data(data))
    fan, valve = (
        100 * metrics.hmean([_expected(scores[m])[c] for c in metrics.OFFICIAL_COLUMNS]) for m in ("fan", "valve")
    )
    assert run_summary(report) == [
        f"Per machine (harmonic mean of AUC source, AUC target, pAUC, %): fan {fan:.2f}, valve {valve:.2f}"
    ]
