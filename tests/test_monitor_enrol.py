"""`asd enrol`: round trip through the CLI, the bank's own front end, --restandardize, refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tolerances import fp32_tiny_model_atol, prepared_atol, unit_dot_atol
from typer.testing import CliRunner, Result

from asdcli.artifacts import load_embeddings, save_embeddings
from asdcli.backend import knn
from asdcli.backend.bank import load_bank
from asdcli.backend.bank_fit import build_bank, fit_threshold
from asdcli.backend.score import score_vectors
from asdcli.cli.main import app

runner = CliRunner()


def run(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class Banked:
    source: Path  # embeddings of the fan source train clips (what the bank was fitted on)
    everything: Path  # embeddings of all fan train clips
    bank: Path  # fitted on the source clips only
    target_clips: list[Path]  # the new condition's normal clips


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Banked:
    root = tmp_path_factory.mktemp("enrol")
    everything, source, bank = root / "all.npz", root / "source.npz", root / "bank.npz"
    result = run(
        "embed", synth_root / "fan" / "train", "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", everything
    )
    assert result.exit_code == 0, result.output
    emb = load_embeddings(everything)
    save_embeddings(source, emb.select(emb.domain == "source"))
    assert run("fit-bank", source, "--out", bank).exit_code == 0
    targets = sorted((synth_root / "fan" / "train").glob("*_target_*.wav"))
    assert len(targets) == 2
    return Banked(source, everything, bank, targets)


def test_enrol_round_trip(banked: Banked, tmp_path: Path) -> None:
    before = banked.bank.read_bytes()
    out = tmp_path / "new.npz"
    result = run("enrol", banked.bank, *banked.target_clips, "--domain", "target", "--out", out)
    assert result.exit_code == 0, result.output
    assert "enrolled 2 target embedding(s); 6 -> 8 vectors" in result.stderr
    assert banked.bank.read_bytes() == before  # the old bank is untouched
    old, new = load_bank(banked.bank), load_bank(out)
    np.testing.assert_array_equal(new.mean, old.mean)
    np.testing.assert_array_equal(new.std, old.std)
    np.testing.assert_array_equal(new.vectors[:6], old.vectors)
    assert list(new.domain) == ["source"] * 6 + ["target"] * 2
    assert list(new.filenames[6:]) == [p.name for p in banked.target_clips]
    # the new rows are the clips' embeddings (as `asd embed` made them, in another batch) in the bank's standardization
    raw = load_embeddings(banked.everything)
    rows = raw.select(np.isin(raw.filenames, [p.name for p in banked.target_clips]))
    tol = prepared_atol(rows.vectors, old.mean, old.std)
    np.testing.assert_allclose(new.vectors[6:], knn.prepare(rows.vectors, old.mean, old.std), rtol=0, atol=tol)
    # threshold refitted on the grown bank's leave-one-out scores
    loo = new.score_prepared(new.vectors, self_index=np.arange(8))
    # enrolment's own search may block the rows otherwise: up to a float32 dot's rounding of unit vectors
    np.testing.assert_allclose(new.loo_scores, loo, rtol=0, atol=unit_dot_atol(new.vectors.shape[1]))
    # (the gamma fit of 8 scores is ill-conditioned, so it is checked on the stored scores)
    assert new.threshold == pytest.approx(fit_threshold(new.loo_scores, new.config.threshold_quantile)[0], rel=1e-9)
    # an enrolled clip now has itself in the bank
    assert score_vectors(new, rows.vectors).max() < 1e-4 < score_vectors(old, rows.vectors).min()
    [record] = new.embedding_meta["enrolments"]
    assert record["count"] == 2 and record["domain"] == "target" and record["restandardized"] is False
    assert record["files"] == [p.name for p in banked.target_clips] and record["time"].endswith("+00:00")


def test_enrol_embeddings_equals_enrol_clips_and_stacks_records(banked: Banked, tmp_path: Path) -> None:
    raw = load_embeddings(banked.everything)
    target = raw.select(raw.domain == "target")
    emb_file, first_half, second_half = tmp_path / "target.npz", tmp_path / "t1.npz", tmp_path / "t2.npz"
    save_embeddings(emb_file, target)
    save_embeddings(first_half, target.select(np.arange(len(target)) < 1))
    save_embeddings(second_half, target.select(np.arange(len(target)) >= 1))
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run("enrol", banked.bank, emb_file, "--domain", "target", "--out", first).exit_code == 0
    from_clips = tmp_path / "c.npz"
    assert run("enrol", banked.bank, *banked.target_clips, "--domain", "target", "--out", from_clips).exit_code == 0
    bank = load_bank(banked.bank)  # the clips are embedded in another batch than the embeddings file's
    tol = prepared_atol(target.vectors, bank.mean, bank.std)
    np.testing.assert_allclose(load_bank(first).vectors, load_bank(from_clips).vectors, rtol=0, atol=tol)
    half = tmp_path / "h.npz"
    assert run("enrol", banked.bank, first_half, "--domain", "target", "--out", half).exit_code == 0
    contradicting = run("enrol", half, second_half, "--domain", "source", "--out", second)  # target clips
    assert contradicting.exit_code == 1 and "is named as a target clip, not --domain source" in contradicting.stderr
    assert not second.exists()
    assert run("enrol", half, second_half, "--domain", "target", "--out", second).exit_code == 0
    records = load_bank(second).embedding_meta["enrolments"]
    assert [(r["domain"], r["count"]) for r in records] == [("target", 1), ("target", len(target) - 1)]
    # clips already in the bank are refused (they would sit at distance 0 from themselves)
    again = run("enrol", first, emb_file, "--domain", "target", "--out", tmp_path / "again.npz")
    assert again.exit_code == 1 and "already in the bank" in again.stderr
    # --out naming the bank replaces it
    size = len(load_bank(half))
    assert run("enrol", half, second_half, "--domain", "target", "--out", half).exit_code == 0
    assert len(load_bank(half)) == size + len(target) - 1


def test_restandardize_refits_on_training_plus_new(banked: Banked, tmp_path: Path) -> None:
    out = tmp_path / "r.npz"
    result = run("enrol", banked.bank, *banked.target_clips, "--domain", "target", "--out", out,
                 "--restandardize", "--train", banked.source)  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = load_embeddings(banked.everything)
    expect = build_bank(raw.vectors, raw.domain, raw.filenames)
    got = load_bank(out)
    # the new clips are embedded in another batch than the embeddings file's: fp32 rounding of the means
    np.testing.assert_allclose(got.mean, expect.mean, rtol=0, atol=fp32_tiny_model_atol(raw.vectors))
    tol = prepared_atol(raw.vectors, expect.mean, expect.std, refitted=True)
    np.testing.assert_allclose(
        got.vectors, expect.vectors[np.argsort(raw.domain == "target", kind="stable")], rtol=0, atol=tol
    )
    assert got.embedding_meta["enrolments"][0]["restandardized"] is True
    wrong = run("enrol", banked.bank, *banked.target_clips, "--domain", "target", "--out", out,
                "--restandardize", "--train", banked.everything.with_name("nothing.npz"))  # fmt: skip
    assert wrong.exit_code == 1 and "does not exist" in wrong.stderr


def _error(result: Result, message: str, out: Path) -> None:
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert not out.exists()


def test_refusals(banked: Banked, tmp_path: Path, synth_root: Path) -> None:
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

    out = tmp_path / "x.npz"
    clip = banked.target_clips[0]
    other = make_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    _error(
        run("enrol", banked.bank, clip, "--domain", "target", "--out", out, "--checkpoint", other),
        "different front ends (checkpoint_sha256",
        out,
    )
    foreign = tmp_path / "foreign.npz"
    assert run("embed", clip, "--checkpoint", other, "--seconds", 1, "--out", foreign).exit_code == 0
    _error(
        run("enrol", banked.bank, foreign, "--domain", "target", "--out", out),
        "different front ends (checkpoint_sha256",
        out,
    )
    anomaly = next((synth_root / "fan" / "test").glob("*_anomaly_*.wav"))
    _error(run("enrol", banked.bank, anomaly, "--domain", "target", "--out", out), "enrol normal clips only", out)
    _error(run("enrol", banked.bank, clip, "--domain", "elsewhere", "--out", out), "--domain must be one of", out)
    _error(run("enrol", banked.bank, clip, "--domain", "target", "--out", out, "--restandardize"), "needs --train", out)
