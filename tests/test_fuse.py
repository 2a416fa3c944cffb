"""`asd fuse`: standardized by the banks' leave-one-out statistics, order-independent, read by `asd report`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd, assert_error
from scipy import stats
from typer.testing import CliRunner

from asdcli.backend.bank import load_banks
from asdcli.cli.main import app

runner = CliRunner()


def _ok(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _error(*args: object) -> str:
    return assert_error(asd(*args))  # exit 1, nothing on stdout, one `Error:` line


def _scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    """Frozen `asd run` folder A, and system B = other banks (domain-zscore) on A's embeddings."""
    root = tmp_path_factory.mktemp("fuse")
    a = root / "a"
    _ok(
        "run",
        synth_root,
        "--checkpoint",
        tiny_checkpoint,
        "--out",
        a,
        "--no-finetune",
        "--seconds",
        1,
        "--device",
        "cpu",
    )
    b_banks, b_sub = root / "b" / "banks", root / "b" / "submission"
    _ok("fit-bank", a / "embeddings" / "train.npz", "--out-dir", b_banks, "--score-norm", "domain-zscore")
    runner.invoke(
        app,
        [
            "score",
            "--banks",
            str(b_banks),
            "--embeddings",
            str(a / "embeddings" / "test.npz"),
            "--submission-dir",
            str(b_sub),
        ],
    )
    return {"a": a, "b": root / "b", "b_spec": Path(f"{b_sub}:{b_banks}"), "root": root}


def test_fusing_a_system_with_itself_ranks_clips_as_the_system(systems: dict[str, Path], tmp_path: Path) -> None:
    a = systems["a"]
    _ok("fuse", a, a, "--out", tmp_path / "fused")
    banks = load_banks(a / "banks")
    for name in sorted(p.name for p in (a / "submission").glob("anomaly_score_*.csv")):
        own, fused = _scores(a / "submission" / name), _scores(tmp_path / "fused" / name)
        assert sorted(own) == sorted(fused)
        names = sorted(own)
        assert stats.spearmanr([own[n] for n in names], [fused[n] for n in names])[0] == pytest.approx(1.0)
        machine, section = name.removeprefix("anomaly_score_").removesuffix("_test.csv").rsplit("_section_", 1)
        mean, std = banks[(machine, section)].loo_stats
        np.testing.assert_allclose(
            [fused[n] for n in names], [(own[n] - mean) / std for n in names], rtol=1e-6, atol=1e-6
        )


def test_fusing_two_systems_is_order_independent(systems: dict[str, Path], tmp_path: Path) -> None:
    a, b = systems["a"], systems["b_spec"]
    _ok("fuse", a, b, "--out", tmp_path / "ab")
    _ok("fuse", b, a, "--out", tmp_path / "ba")
    names = sorted(p.name for p in (tmp_path / "ab").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ba").iterdir()) and len(names) == 6
    for name in names:
        assert (tmp_path / "ab" / name).read_bytes() == (tmp_path / "ba" / name).read_bytes()
    # Weights move the fused scores towards the heavier system.
    _ok("fuse", a, b, "--weights", "1,0", "--out", tmp_path / "a_only")
    score = min(p.name for p in (tmp_path / "ab").glob("anomaly_score_*"))
    banks = load_banks(systems["a"] / "banks")
    key = score.removeprefix("anomaly_score_").removesuffix("_test.csv").rsplit("_section_", 1)
    mean, std = banks[(key[0], key[1])].loo_stats
    own = _scores(a / "submission" / score)
    fused = _scores(tmp_path / "a_only" / score)
    np.testing.assert_allclose([fused[n] for n in sorted(own)], [(own[n] - mean) / std for n in sorted(own)], atol=1e-6)


def test_asd_report_reads_the_fused_folder(systems: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    _ok("fuse", systems["a"], systems["b_spec"], "--out", tmp_path / "fused")
    out = _ok("report", tmp_path / "fused", "--data", synth_root, "--format", "csv")
    assert "official score," in out and "precision (source)" in out  # decisions were read too


def test_fuse_errors(systems: dict[str, Path], tmp_path: Path) -> None:
    a = systems["a"]
    assert "is not an `asd run` folder" in _error("fuse", tmp_path, "--out", tmp_path / "x")
    assert "does not exist" in _error("fuse", tmp_path / "nope", "--out", tmp_path / "x")
    assert "--weights has 1 value(s) for 2 systems" in _error("fuse", a, a, "--weights", "1", "--out", tmp_path / "x")
    assert "comma-separated numbers" in _error("fuse", a, "--weights", "x", "--out", tmp_path / "x")
    assert "not all 0" in _error("fuse", a, "--weights", "0", "--out", tmp_path / "x")
    assert "is the submission folder of system" in _error("fuse", a, "--out", a / "submission")
    # A system whose clips differ: one test clip fewer in one section.
    c = tmp_path / "c"  # a hand-made system: no stages/ records to check it against
    shutil.copytree(a, c, ignore=shutil.ignore_patterns("embeddings", "finetune", "stages"))
    score = min((c / "submission").glob("anomaly_score_*"))
    score.write_text("".join(score.read_text().splitlines(keepends=True)[1:]))
    machine = score.name.removeprefix("anomaly_score_").split("_section_")[0]
    line = _error("fuse", a, c, "--out", tmp_path / "x")
    assert f"{machine} section 00: the test clips of {c} differ" in line
    # A machine/section only one system has.
    score.unlink()
    score.with_name(score.name.replace("anomaly_score_", "decision_result_")).unlink()
    assert f"{machine} section 00 is scored by only one of" in _error("fuse", a, c, "--out", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_run_folder_is_checked_against_its_stage_records(
    systems: dict[str, Path], synth_root: Path, tmp_path: Path
) -> None:
    """Banks or scores replaced after `asd run`, banks fitted again but not scored again, and an
    unfinished record are each one error naming the file: for `asd fuse` (RUN or
    RUN/submission:RUN/banks), `asd report` (RUN, RUN/submission, --banks RUN/banks) and `asd package`."""
    import hashlib
    import json

    def copy() -> Path:
        c = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(systems["a"], c, ignore=shutil.ignore_patterns("embeddings", "finetune"))
        return c

    def fuse_error(c: Path, *needles: str) -> None:
        report = ("report", "--data", synth_root, "--html", tmp_path / "x.html")
        sub = c / "submission"
        for args in (
            ("fuse", systems["a"], c, "--out", tmp_path / "x"),
            ("fuse", systems["a"], f"{sub}:{c / 'banks'}", "--out", tmp_path / "x"),
            (*report, c),
            (*report, sub, "--plots", tmp_path / "x"),
            (*report, sub, "--banks", c / "banks"),
            ("package", c, "--team", "Doe_ACME", "--data", synth_root, "--out", tmp_path / "x"),
        ):
            line = _error(*args)
            assert all(n in line for n in needles) and "re-run `asd run DATA --out" in line, (args, needles, line)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.html").exists()

    c = copy()
    score = min((c / "submission").glob("anomaly_score_*"))
    score.write_text(score.read_text().replace(",", ",0", 1))
    fuse_error(c, f"{score} is not the score file", "stages/score.json records another size or SHA-256")

    c = copy()
    bank = min((c / "banks").glob("bank_*.npz"))
    shutil.copy(bank, c / "banks" / "bank_extra.npz")
    fuse_error(c, f"{c / 'banks' / 'bank_extra.npz'} is not the bank", "stages/fit-bank.json does not list it")

    c = copy()  # fit-bank ran again (its record lists the new banks) and score did not: a killed run
    shutil.copy(systems["b"] / "banks" / bank.name, c / "banks" / bank.name)
    record_path = c / "stages" / "fit-bank.json"
    record = json.loads(record_path.read_text())
    body = (c / "banks" / bank.name).read_bytes()
    record["outputs"][f"banks/{bank.name}"] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    record_path.write_text(json.dumps(record))
    fuse_error(c, f"{c / 'submission'} was not scored with the banks in {c / 'banks'}")

    record["status"] = "started"
    record_path.write_text(json.dumps(record))
    fuse_error(c, f"{record_path} does not record a finished fit-bank stage")


def test_report_and_package_read_a_run_folder_as_asd_run_wrote_it(
    systems: dict[str, Path], synth_root: Path, tmp_path: Path
) -> None:
    """`asd report RUN` is `asd report RUN/submission` (named after the run, the run's thresholds);
    an edited decision file (read by report and package) or replaced test embeddings (the clips
    `asd package` expects without --data) are one error naming the file."""
    a = systems["a"]
    by_run = _ok("report", a, "--data", synth_root, "--format", "csv")
    assert by_run == _ok("report", a / "submission", "--data", synth_root, "--format", "csv")
    assert "a (frozen BEATs),fan,00,decision threshold," in by_run
    c = tmp_path / "c"
    shutil.copytree(a, c)
    decisions = min((c / "submission").glob("decision_result_*"))
    decisions.write_text(decisions.read_text() + "\n")
    for args in (("report", c, "--data", synth_root), ("package", c, "--team", "Doe_ACME", "--out", tmp_path / "x")):
        line = _error(*args)
        assert f"{decisions} is not the decision file that `asd run` wrote" in line, line
    shutil.copytree(a / "submission", c / "submission", dirs_exist_ok=True)
    shutil.copy(c / "embeddings" / "train.npz", c / "embeddings" / "test.npz")
    line = _error("package", c, "--team", "Doe_ACME", "--out", tmp_path / "x")
    assert f"{c / 'embeddings' / 'test.npz'} is not the embeddings file that `asd run` wrote" in line, line
    assert not (tmp_path / "x").exists()
    _ok("package", c, "--team", "Doe_ACME", "--data", synth_root, "--out", tmp_path / "x")  # the embeddings unread


def test_banks_without_statistics_are_an_error_naming_the_section(systems: dict[str, Path], tmp_path: Path) -> None:
    import json

    c = tmp_path / "c"  # a hand-made system: no stages/ records to check it against
    shutil.copytree(systems["a"], c, ignore=shutil.ignore_patterns("embeddings", "finetune", "stages"))
    bank = min((c / "banks").glob("bank_*.npz"))
    with np.load(bank, allow_pickle=False) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    np.savez(bank, **{**arrays, "meta": np.asarray(json.dumps({**meta, "loo_stats": None}))})
    line = _error("fuse", systems["a"], c, "--out", tmp_path / "x")
    assert f"The bank of {meta['machine']} section {meta['section']} in {c} has no leave-one-out statistics" in line


def test_run_recipe_selects_the_back_end(systems: dict[str, Path], synth_root: Path, tiny_checkpoint: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    """`asd run --recipe density` fits density banks; an explicit --score-norm wins over the recipe."""
    run = tmp_path / "run"
    shutil.copytree(systems["a"], run)  # embeddings are up to date: only banks, scores and report are redone
    base = (
        "run",
        synth_root,
        "--checkpoint",
        tiny_checkpoint,
        "--out",
        run,
        "--no-finetune",
        "--seconds",
        1,
        "--device",
        "cpu",
    )
    _ok(*base, "--recipe", "density")
    assert {b.config.score_norm for b in load_banks(run / "banks").values()} == {"density"}
    _ok(*base, "--recipe", "density", "--score-norm", "none", "--k", "2")
    assert {(b.config.score_norm, b.config.k) for b in load_banks(run / "banks").values()} == {("none", 2)}
    assert "--recipe must be one of seed, density" in _error(*base, "--recipe", "best")
    assert "--domain-aware was removed" in _error(*base, "--domain-aware")


def test_a_score_too_large_to_standardize_is_an_error_not_inf(systems: dict[str, Path], tmp_path: Path) -> None:
    a = systems["a"]
    sub = tmp_path / "sub"  # A's scores as a SUB:BANKS pair: no stage records to catch the edit
    shutil.copytree(a / "submission", sub)
    for decisions in sub.glob("decision_result_*"):
        decisions.unlink()  # scores only: the decisions would disagree with the edited score
    score = min(sub.glob("anomaly_score_*"))
    lines = score.read_text().splitlines()
    lines[0] = lines[0].rsplit(",", 1)[0] + ",1e308"  # finite, so every reader accepts it
    score.write_text("\n".join(lines) + "\n")
    line = _error("fuse", a, f"{sub}:{a / 'banks'}", "--out", tmp_path / "x")
    assert "overflows" in line and "1e+308" in line
    assert not (tmp_path / "x").exists()


def test_fuse_on_a_full_disk_names_the_output(systems: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    import asdcli.backend.score as score
    from asdcli.errors import AsdError

    def full_disk(path: Path, text: str) -> None:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise AsdError(f"Cannot write {path}: {e.strerror}.") from e

    monkeypatch.setattr(score, "write_text_atomic", full_disk)
    out = tmp_path / "fused"
    msg = _error("fuse", systems["a"], systems["b_spec"], "--out", out)
    assert str(out / "anomaly_score_") in msg and "No space left" in msg and ".tmp" not in msg
    assert not out.exists() and sorted(tmp_path.iterdir()) == []
