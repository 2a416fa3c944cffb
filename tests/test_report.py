"""asd report: ground truth, submission validation, aggregation, CSV/JSON/table output, plots."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from asdcli.evaluate import metrics
from asdcli.cli.main import app
from asdcli.errors import DataError
from asdcli.evaluate.ground_truth import ground_truth_from_data, read_ground_truth, write_ground_truth
from asdcli.evaluate.report import evaluate_submission, parse_rows
from asdcli.evaluate.render import ReportConfig, report_submission, run_report, to_json

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
    rng = np.random.default_rng(abs(hash(machine)) % 1000)
    return {n: float(rng.normal() + shift * a - 0.3 * t) for n, a, t in _names()}


def _write_sub(folder: Path, machines: tuple[str, ...] = ("fan", "valve"), shift: float = 1.0,
               decisions: bool = True) -> dict[str, dict[str, float]]:
    folder.mkdir(parents=True, exist_ok=True)
    all_scores = {}
    for m in machines:
        s = _scores(m, shift)
        all_scores[m] = s
        (folder / f"anomaly_score_{m}_section_00_test.csv").write_text("".join(f"{n},{v}\n" for n, v in s.items()))
        if decisions:
            (folder / f"decision_result_{m}_section_00_test.csv").write_text(
                "".join(f"{n},{int(v > 0.5)}\n" for n, v in s.items()))
    return all_scores


def _expected(scores: dict[str, float]) -> dict[str, float]:
    """Independent computation of the official values with plain masks and sklearn."""
    names = _names()
    y = np.array([a for _, a, _ in names])
    t = np.array([tg for _, _, tg in names])
    s = np.array([scores[n] for n, _, _ in names])
    src, tgt = (t == 0) | (y == 1), (t == 1) | (y == 1)
    return {"AUC (source)": roc_auc_score(y[src], s[src]), "AUC (target)": roc_auc_score(y[tgt], s[tgt]),
            "pAUC": roc_auc_score(y, s, max_fpr=0.1), "AUC (all)": roc_auc_score(y, s)}


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
    assert (tmp_path / "gt/ground_truth_domain/ground_truth_fan_section_00_test.csv").read_text().startswith(
        "section_00_source_test_anomaly_0000_vel_0_loc_A.wav,0\n")
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
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["systems"][0]["machines"] == jb["systems"][0]["machines"]


def test_anonymised_ground_truth_accepts_labelled_names_via_attributes(tmp_path: Path) -> None:
    gt = tmp_path / "gt"
    names = _names()
    for sub in ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes"):
        (gt / sub).mkdir(parents=True)
    f = "ground_truth_fan_section_00_test.csv"
    anon = [f"section_00_{i:04d}.wav" for i in range(len(names))]
    (gt / "ground_truth_data" / f).write_text("".join(f"{a},{y}\n" for a, (_, y, _) in zip(anon, names)))
    (gt / "ground_truth_domain" / f).write_text("".join(f"{a},{t}\n" for a, (_, _, t) in zip(anon, names)))
    (gt / "ground_truth_attributes" / f).write_text(
        "".join(f"{a},{n[:-4]},{n}\n" for a, (n, _, _) in zip(anon, names)))
    scores = _scores("fan")
    sub = tmp_path / "sub"
    sub.mkdir()
    # half the rows by anonymised name, half by labelled name: both resolve to the same clips
    rows = [f"{anon[i] if i % 2 else n},{scores[n]}\n" for i, (n, _, _) in enumerate(names)]
    (sub / "anomaly_score_fan_section_00_test.csv").write_text("".join(rows))
    report = evaluate_submission(sub, read_ground_truth(gt))
    assert report.sections[0].metrics["AUC (source)"] == pytest.approx(_expected(scores)["AUC (source)"])


# ---------------------------------------------------------------- CLI output

def test_cli_csv_is_default_when_piped(setup) -> None:
    data, sub, scores = setup
    res = runner.invoke(app, ["report", str(sub), "--data", str(data)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "fan"
    assert lines[1].startswith("section,AUC (source),AUC (target),pAUC,pAUC (source),pAUC (target),precision (source)")
    row = dict(zip(lines[1].split(","), lines[2].split(",")))
    exp = _expected(scores["fan"])
    for col in ("AUC (source)", "AUC (target)", "pAUC", "AUC (all)"):
        assert float(row[col]) == pytest.approx(exp[col], abs=1e-9)
    assert lines[3].startswith("arithmetic mean,") and lines[4].startswith("harmonic mean,")
    official = metrics.hmean([_expected(scores[m])[c] for c in metrics.OFFICIAL_COLUMNS for m in ("fan", "valve")])
    assert lines[-1].startswith("official score,")
    assert float(lines[-1].split(",")[1]) == pytest.approx(official, abs=1e-9)


def test_cli_json(setup) -> None:
    data, sub, scores = setup
    res = runner.invoke(app, ["report", str(sub), "--data", str(data), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    system = doc["systems"][0]
    assert system["name"] == "runA" and system["n_official_values"] == 6
    sec = system["machines"]["valve"]["sections"]["00"]
    assert sec["AUC (target)"] == pytest.approx(_expected(scores["valve"])["AUC (target)"])
    assert sec["n_clips"] == 4 * N and sec["has_decisions"] is True
    assert sec["decision_threshold"] is not None and 0 <= sec["F1 score (source)"] <= 1
    assert set(system["summary"]) == {"arithmetic mean", "harmonic mean"}


def test_cli_table_single_system(setup) -> None:
    data, sub, scores = setup
    res = runner.invoke(app, ["report", str(sub), "--data", str(data), "-f", "table"])
    assert res.exit_code == 0, res.output
    official = metrics.hmean([_expected(scores[m])[c] for c in metrics.OFFICIAL_COLUMNS for m in ("fan", "valve")])
    assert "official score" in res.stdout and f"{100 * official:.2f}" in res.stdout
    assert "F1" in res.stdout and "fan" in res.stdout and "valve" in res.stdout


def test_cli_compares_systems_and_marks_the_best(setup, tmp_path: Path) -> None:
    data, sub, _ = setup
    _write_sub(tmp_path / "runB", shift=3.0)  # clearly better
    res = runner.invoke(app, ["report", str(sub), str(tmp_path / "runB"), "--data", str(data), "-f", "table"])
    assert res.exit_code == 0, res.output
    official_line = next(line for line in res.stdout.splitlines() if "official score" in line)
    assert official_line.count("★") == 1 and official_line.rstrip().split("★")[1].strip() != ""
    assert official_line.index("★") > official_line.index(official_line.split()[3])  # runB column holds ★
    csv_res = runner.invoke(app, ["report", str(sub), str(tmp_path / "runB"), "--data", str(data), "-f", "csv"])
    assert csv_res.stdout.startswith("system,runA\n") and "\nsystem,runB\n" in csv_res.stdout


def test_cli_stdin_pipe(setup) -> None:
    data, _, scores = setup
    text = "".join(f"{n},{v}\n" for n, v in scores["fan"].items())
    res = runner.invoke(app, ["report", "-", "--machine", "fan", "--data", str(data), "-f", "json"], input=text)
    assert res.exit_code == 0, res.output
    system = json.loads(res.stdout)["systems"][0]
    assert list(system["machines"]) == ["fan"]
    exp = _expected(scores["fan"])
    assert system["official_score"] == pytest.approx(metrics.hmean([exp[c] for c in metrics.OFFICIAL_COLUMNS]))


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
    assert json.loads(out.read_text())["systems"][0]["official_score"] == pytest.approx(report.official_score)
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
    (sub / "anomaly_score_valve_section_00_test.csv").write_text("".join(f"{n},{i}\n" for i, n in enumerate(st.filenames)))
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


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", ""])
def test_error_non_numeric_scores(setup, bad: str) -> None:
    data, sub, _ = setup
    lines = _fan_file(sub).read_text().splitlines(keepends=True)
    lines[4] = lines[4].split(",")[0] + f",{bad}\n"
    _fan_file(sub).write_text("".join(lines))
    msg = _error([str(sub), "--data", str(data)])
    assert "anomaly_score_fan_section_00_test.csv line 5" in msg and "not a finite number" in msg


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
    assert "Pass one or more submission folders" in _error(["--data", str(data)])


def test_baseline_file_names_are_recognised(setup) -> None:
    data, sub, scores = setup
    for p in sorted(sub.iterdir()):
        p.rename(p.with_name(p.name.replace("_fan_", "_DCASE2025T2fan_").replace("_test.csv", "_test_seed13711_id(0_).csv")))
    report = evaluate_submission(sub, ground_truth_from_data(data))
    fan = report.of_machine("fan")[0]
    assert fan.decisions is not None
    assert fan.metrics["AUC (target)"] == pytest.approx(_expected(scores["fan"])["AUC (target)"])


def test_error_messages_from_library(setup) -> None:
    data, sub, _ = setup
    with pytest.raises(DataError, match="does not exist"):
        run_report(ReportConfig(submissions=(str(sub / "nope"),), data=data), stdout=io.StringIO())


# ---------------------------------------------------------------- plots

def test_plots_written_and_non_empty(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", machines=("fan",))
    _write_sub(tmp_path / "runA", machines=("fan",))
    _write_sub(tmp_path / "runB", machines=("fan",), shift=2.0, decisions=False)
    res = runner.invoke(app, ["report", str(tmp_path / "runA"), str(tmp_path / "runB"), "--data", str(data),
                              "--plots", str(tmp_path / "plots"), "-f", "csv"])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in (tmp_path / "plots").rglob("*.png"))
    assert pngs == ["comparison.png", "runA/fan_section_00.png", "runA/summary.png",
                    "runB/fan_section_00.png", "runB/summary.png"]
    for p in (tmp_path / "plots").rglob("*.png"):
        blob = p.read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000


def test_json_has_no_nan(setup) -> None:
    data, sub, _ = setup
    (sub / "decision_result_fan_section_00_test.csv").unlink()
    doc = to_json([evaluate_submission(sub, ground_truth_from_data(data))])
    text = json.dumps(doc, allow_nan=False)  # raises on NaN
    assert '"precision (source)": null' in text
