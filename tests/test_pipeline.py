"""`asd run` and `asd demo` end to end: stages, skipping fresh ones, redoing changed ones, Ctrl-C."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import asdcli.finetune.loop
import asdcli.pipeline.run
from asdcli.cli.main import app
from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
from asdcli.pipeline.stages import files_fingerprint, stage_key

runner = CliRunner()
MACHINES = ("bearing", "fan", "gearbox")


def _run(data: Path, ckpt: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["run", str(data), "--checkpoint", str(ckpt), "--out", str(out), "--seconds", "1", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", *extra]
    return runner.invoke(app, args)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    result = _run(synth_root, tiny_checkpoint, out)
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_every_stage(finished_run: Path) -> None:
    sub = finished_run / "submission"
    names = sorted(p.name for p in sub.iterdir())
    assert names == sorted([f"anomaly_score_{m}_section_00_test.csv" for m in MACHINES]
                           + [f"decision_result_{m}_section_00_test.csv" for m in MACHINES])
    rows = (sub / "anomaly_score_fan_section_00_test.csv").read_text().splitlines()
    assert len(rows) == 12 and all(len(r.split(",")) == 2 for r in rows)  # 3 clips x 4 test cells
    assert (finished_run / "finetune" / "adapter" / "adapter_model.safetensors").is_file()
    assert (finished_run / "embeddings" / "train.npz").is_file() and (finished_run / "embeddings" / "test.npz").is_file()
    assert sorted(p.name for p in (finished_run / "banks").iterdir()) == [f"bank_{m}_section_00.npz" for m in MACHINES]
    assert "official score" in (finished_run / "report.csv").read_text()
    for name in ("finetune", "embed", "fit-bank", "score"):
        record = json.loads((finished_run / "stages" / f"{name}.json").read_text())
        assert record["stage"] == name and len(record["key"]) == 64
    assert not list(finished_run.rglob("*.tmp"))


def test_rerun_skips_fresh_stages_and_prints_submission(finished_run: Path, synth_root: Path, tiny_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _mtimes(run / "submission") | _mtimes(run / "embeddings")
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run / "submission")
    assert result.output.count("up to date, skipped") == 4
    assert _mtimes(run / "submission") | _mtimes(run / "embeddings") == before


def test_other_device_or_workers_skips_every_stage(finished_run: Path, synth_root: Path, tiny_checkpoint: Path,
                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    result = _run(synth_root, tiny_checkpoint, run, "--workers", "1", "--device", "auto")
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date, skipped") == 4


def test_changed_bank_option_redoes_only_bank_and_score(finished_run: Path, synth_root: Path, tiny_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    embeddings = _mtimes(run / "embeddings")
    result = _run(synth_root, tiny_checkpoint, run, "--k", "2")
    assert result.exit_code == 0, result.output
    assert "finetune: up to date" in result.output and "embed: up to date" in result.output
    assert "fit-bank: KNN banks" in result.output and "score: anomaly scores" in result.output
    assert _mtimes(run / "embeddings") == embeddings
    assert json.loads((run / "stages" / "fit-bank.json").read_text())["key"] != json.loads(
        (finished_run / "stages" / "fit-bank.json").read_text())["key"]


def test_no_finetune_uses_frozen_backbone(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "frozen [v1]"  # brackets are shown verbatim, not read as Rich markup
    result = _run(synth_root, tiny_checkpoint, run, "--no-finetune")
    assert result.exit_code == 0, result.output
    assert not (run / "finetune").exists()
    meta = json.loads(str(np.load(run / "embeddings" / "train.npz")["meta"]))
    assert meta["embedding"] == "backbone" and meta["adapter_id"] is None
    assert (run / "report.csv").is_file()
    assert f"Run folder {run}:" in result.output and f"Artifacts in {run}:" in result.output


def test_ctrl_c_during_finetune_resumes_after_last_epoch(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_save_state = asdcli.finetune.loop.save_state

    def save_then_interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_save_state(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(asdcli.finetune.loop, "save_state", save_then_interrupt)
    run = tmp_path / "run"
    result = _run(synth_root, tiny_checkpoint, run, "--epochs", "2")
    assert result.exit_code == 130
    assert "Interrupted" in result.output
    assert json.loads((run / "stages" / "finetune.json").read_text())["status"] == "started"
    assert not (run / "finetune" / "run.json").exists()
    monkeypatch.setattr(asdcli.finetune.loop, "save_state", real_save_state)
    result = _run(synth_root, tiny_checkpoint, run, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    assert (run / "stages" / "score.json").is_file()


def test_ctrl_c_during_embed_leaves_no_partial_artifact(finished_run: Path, synth_root: Path, tiny_checkpoint: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stages" / "embed.json").unlink()  # force the embed stage to run again
    before = (run / "embeddings" / "train.npz").read_bytes()

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    import asdcli.frontend.embed

    monkeypatch.setattr(asdcli.frontend.embed, "embed_clips", interrupted)
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 130
    assert (run / "embeddings" / "train.npz").read_bytes() == before
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]
    assert not (run / "stages" / "embed.json").exists()


def test_changed_clip_redoes_everything_downstream(finished_run: Path, synth_root: Path, tiny_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    victim = sorted((data / "fan" / "train").glob("*.wav"))[0]
    victim.unlink()
    result = _run(data, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert "up to date" not in result.output


def test_eval_data_without_labels_stops_at_submission(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval"
    for machine in MACHINES:
        shutil.copytree(synth_root / machine / "train", data / machine / "train")
        test = data / machine / "test"
        test.mkdir(parents=True)
        for i, clip in enumerate(sorted((synth_root / machine / "test").glob("*.wav"))):
            shutil.copy(clip, test / f"section_00_{i:04d}.wav")  # anonymised eval names
    result = _run(data, tiny_checkpoint, tmp_path / "run", "--no-finetune")
    assert result.exit_code == 0, result.output
    assert "no report" in result.output
    assert len(list((tmp_path / "run" / "submission").glob("anomaly_score_*.csv"))) == 3
    assert not (tmp_path / "run" / "report.csv").exists()


def test_run_without_train_clips_is_one_line_error(tmp_path: Path, synth_root: Path, tiny_checkpoint: Path) -> None:
    shutil.copytree(synth_root / "fan" / "test", tmp_path / "data" / "fan" / "test")
    result = _run(tmp_path / "data", tiny_checkpoint, tmp_path / "run")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "no train clips" in result.output
    assert "Traceback" not in result.output


def test_stage_key_is_order_independent_and_fingerprint_sees_changes(tmp_path: Path) -> None:
    assert stage_key({"a": 1, "b": [1, 2]}) == stage_key({"b": [1, 2], "a": 1})
    assert stage_key({"a": 1}) != stage_key({"a": 2})
    f = tmp_path / "x.wav"
    f.write_bytes(b"1")
    before = files_fingerprint([f])
    f.write_bytes(b"22")
    assert files_fingerprint([f]) != before


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--seconds", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "Official score:" in result.output and "randomly initialised tiny BEATs" in result.output
    assert "--checkpoint BEATs_iter3.pt" in result.output
    assert (tmp_path / "demo" / "run" / "submission").is_dir()
    assert list((tmp_path / "demo" / "run" / "plots").glob("*.png"))
    again = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--seconds", "1", "--epochs", "1"])
    assert again.exit_code == 0 and again.output.count("up to date, skipped") == 4


def test_make_tiny_checkpoint_is_deterministic(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a.pt", seed=3).read_bytes()
    b = make_tiny_checkpoint(tmp_path / "b.pt", seed=3).read_bytes()
    from asdcli.frontend.beats.checkpoint import load_beats

    wa, wb = load_beats(tmp_path / "a.pt").model.state_dict(), load_beats(tmp_path / "b.pt").model.state_dict()
    assert all((wa[k] == wb[k]).all() for k in wa) and len(a) > 0 and len(b) > 0


def test_pipeline_module_has_stage_names() -> None:
    assert asdcli.pipeline.run.STAGE_NAMES == ("finetune", "embed", "fit-bank", "score", "report")


def test_bad_test_clip_fails_before_fine_tuning(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    bad = data / "gearbox" / "test" / "section_00_target_test_anomaly_9999_noAttribute.wav"
    bad.write_text("not audio")
    result = _run(data, tiny_checkpoint, tmp_path / "run")
    assert result.exit_code == 1
    assert f"Cannot read {bad} as audio" in result.output
    assert "finetune" not in result.output  # nothing started
    assert not (tmp_path / "run" / "finetune").exists()


def test_ctrl_c_during_embed_resumes_after_the_last_saved_part(finished_run: Path, synth_root: Path,
                                                               tiny_checkpoint: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import asdcli.frontend.embed

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stages" / "embed.json").unlink()
    monkeypatch.setattr(asdcli.frontend.embed, "EMBED_CHUNK", 20)  # 60 clips -> 3 parts of 20
    real_embed_clips = asdcli.frontend.embed.embed_clips
    calls: list[int] = []

    def interrupt_third_part(clips, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(clips))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed_clips(clips, *args, **kwargs)

    monkeypatch.setattr(asdcli.frontend.embed, "embed_clips", interrupt_third_part)
    assert _run(synth_root, tiny_checkpoint, run).exit_code == 130
    assert len(list((run / "embeddings").glob(".parts-*/*.npz"))) == 2
    calls.clear()
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert calls == [20]  # only the part not saved before
    assert not list((run / "embeddings").glob(".parts-*"))
    for name in ("train.npz", "test.npz"):  # same result as the uninterrupted run
        a, b = np.load(run / "embeddings" / name), np.load(finished_run / "embeddings" / name)
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)
        assert list(a["filenames"]) == list(b["filenames"])
