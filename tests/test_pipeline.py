"""`asd run` and `asd demo` end to end: stages, skipping fresh ones, redoing changed ones, Ctrl-C."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_checks import assert_error
from safetensors.torch import load_file
from tolerances import fp32_tiny_model_atol
from typer.testing import CliRunner

import asdcli.finetune.epoch
from asdcli.cli.main import app
from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
from asdcli.pipeline.stages import files_fingerprint, stage_key

runner = CliRunner()
MACHINES = ("bearing", "fan", "gearbox")


def _run(data: Path, ckpt: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    epochs = [] if "--no-finetune" in extra else ["--epochs", "1"]  # a fine-tuning option with it is an error
    args = [
        "run",
        str(data),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--seconds",
        "1",
        *epochs,
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
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
    assert names == sorted(
        [f"anomaly_score_{m}_section_00_test.csv" for m in MACHINES]
        + [f"decision_result_{m}_section_00_test.csv" for m in MACHINES]
    )
    rows = (sub / "anomaly_score_fan_section_00_test.csv").read_text().splitlines()
    assert len(rows) == 12 and all(len(r.split(",")) == 2 for r in rows)  # 3 clips x 4 test cells
    assert (finished_run / "finetune" / "adapter" / "adapter_model.safetensors").is_file()
    assert (finished_run / "embeddings" / "train.npz").is_file() and (
        finished_run / "embeddings" / "test.npz"
    ).is_file()
    assert sorted(p.name for p in (finished_run / "banks").iterdir()) == [f"bank_{m}_section_00.npz" for m in MACHINES]
    assert "official score" in (finished_run / "report.csv").read_text()
    for name in ("finetune", "embed", "fit-bank", "score"):
        record = json.loads((finished_run / "stages" / f"{name}.json").read_text())
        assert record["stage"] == name and len(record["key"]) == 64
    assert not list(finished_run.rglob("*.tmp"))


def test_rerun_skips_fresh_stages_and_prints_submission(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _mtimes(run / "submission") | _mtimes(run / "embeddings")
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run / "submission")
    assert result.output.count("up to date, skipped") == 4
    assert _mtimes(run / "submission") | _mtimes(run / "embeddings") == before


def test_other_device_or_workers_skips_every_stage(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    result = _run(synth_root, tiny_checkpoint, run, "--workers", "1", "--device", "auto")
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date, skipped") == 4


def test_changed_bank_option_redoes_only_bank_and_score(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    embeddings = _mtimes(run / "embeddings")
    result = _run(synth_root, tiny_checkpoint, run, "--k", "2")
    assert result.exit_code == 0, result.output
    assert "finetune: up to date" in result.output and "embed: up to date" in result.output
    assert "fit-bank: KNN banks" in result.output and "score: anomaly scores" in result.output
    assert _mtimes(run / "embeddings") == embeddings
    assert (
        json.loads((run / "stages" / "fit-bank.json").read_text())["key"]
        != json.loads((finished_run / "stages" / "fit-bank.json").read_text())["key"]
    )


def test_no_finetune_uses_frozen_backbone(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "frozen [v1]"  # brackets are shown verbatim, not read as Rich markup
    result = _run(synth_root, tiny_checkpoint, run, "--no-finetune")
    assert result.exit_code == 0, result.output
    assert not (run / "finetune").exists()
    meta = json.loads(str(np.load(run / "embeddings" / "train.npz")["meta"]))
    assert meta["embedding"] == "backbone" and meta["adapter_id"] is None
    assert (run / "report.csv").is_file()
    assert f"Run folder {run}:" in result.output and f"Artifacts in {run}:" in result.output


def test_ctrl_c_during_finetune_resumes_after_last_epoch(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save_state = asdcli.finetune.epoch.save_state

    def save_then_interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_save_state(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(asdcli.finetune.epoch, "save_state", save_then_interrupt)
    run = tmp_path / "run"
    result = _run(synth_root, tiny_checkpoint, run, "--epochs", "2")
    assert result.exit_code == 130
    assert "Interrupted" in result.output
    assert json.loads((run / "stages" / "finetune.json").read_text())["status"] == "started"
    assert not (run / "finetune" / "run.json").exists()
    monkeypatch.setattr(asdcli.finetune.epoch, "save_state", real_save_state)
    result = _run(synth_root, tiny_checkpoint, run, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    assert (run / "stages" / "score.json").is_file()


def test_ctrl_c_during_embed_leaves_no_partial_artifact(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stages" / "embed.json").unlink()  # force the embed stage to run again
    before = (run / "embeddings" / "train.npz").read_bytes()

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    import asdcli.frontend.embed

    monkeypatch.setattr(asdcli.frontend.embed, "embed", interrupted)
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 130
    assert (run / "embeddings" / "train.npz").read_bytes() == before
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]
    assert not (run / "stages" / "embed.json").exists()


def test_changed_clip_redoes_everything_downstream(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
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
    plots = _run(data, tiny_checkpoint, tmp_path / "run", "--no-finetune", "--plots")  # nothing to draw
    assert_error(plots, f"--plots draws the report of labelled test clips, but no test file name under {data}")
    assert not (tmp_path / "run").exists()
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
    from asdcli.frontend.beats.checkpoint import load_beats

    make_tiny_checkpoint(tmp_path / "a.pt", seed=3)
    make_tiny_checkpoint(tmp_path / "b.pt", seed=3)
    make_tiny_checkpoint(tmp_path / "c.pt", seed=4)
    wa, wb, wc = (load_beats(tmp_path / f"{n}.pt").model.state_dict() for n in "abc")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters


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


def test_ctrl_c_during_embed_resumes_after_the_last_saved_part(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asdcli.frontend.embed

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stages" / "embed.json").unlink()
    monkeypatch.setattr(asdcli.frontend.embed, "EMBED_CHUNK", 20)  # 60 clips -> 3 parts of 20
    real_embed = asdcli.frontend.embed.embed
    calls: list[int] = []

    def interrupt_third_part(embedder, clips, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(clips))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(embedder, clips, *args, **kwargs)

    monkeypatch.setattr(asdcli.frontend.embed, "embed", interrupt_third_part)
    assert _run(synth_root, tiny_checkpoint, run).exit_code == 130
    assert len(list((run / "embeddings").glob(".parts-*/*.npz"))) == 2
    calls.clear()
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert calls == [20]  # only the part not saved before
    assert not list((run / "embeddings").glob(".parts-*"))
    for name in ("train.npz", "test.npz"):  # same result as the uninterrupted run
        a, b = np.load(run / "embeddings" / name), np.load(finished_run / "embeddings" / name)
        # parts of 20 clips are batched otherwise than 60 at once (batches of 8): fp32 rounding only
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=0, atol=fp32_tiny_model_atol(b["embeddings"]))
        assert list(a["filenames"]) == list(b["filenames"])


# ---------------------------------------------------------------------------------------------
# values: anomalous clips score higher


def _write_separable_dataset(root: Path) -> None:
    """Two machines, each a steady tone (random phase, faint noise); anomalies add loud broadband
    noise: any working front end + bank gives them larger distances to the normal train clips."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for machine, tone in (("fan", 500.0), ("pump", 1300.0)):
        cells = [("train", d, "normal", n) for d, n in (("source", 6), ("target", 2))]
        cells += [("test", d, lab, 3) for d in ("source", "target") for lab in ("normal", "anomaly")]
        for split, domain, label, n in cells:
            folder = root / machine / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                x = 0.3 * np.sin(2 * np.pi * tone * t + rng.uniform(0, 2 * np.pi)) + 0.01 * rng.standard_normal(16000)
                if label == "anomaly":
                    x += 0.3 * rng.standard_normal(16000)
                sf.write(
                    str(folder / f"section_00_{domain}_{split}_{label}_{i:04d}_a_1.wav"), x.astype(np.float32), 16000
                )


def test_run_scores_anomalous_clips_higher_than_normal_ones(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _write_separable_dataset(tmp_path / "data")
    result = _run(tmp_path / "data", tiny_checkpoint, tmp_path / "run")
    assert result.exit_code == 0, result.output
    for machine in ("fan", "pump"):
        rows = (
            (tmp_path / "run" / "submission" / f"anomaly_score_{machine}_section_00_test.csv").read_text().splitlines()
        )
        scores = {label: [float(r.split(",")[1]) for r in rows if f"_{label}_" in r] for label in ("normal", "anomaly")}
        assert len(scores["normal"]) == len(scores["anomaly"]) == 6
        assert np.mean(scores["anomaly"]) > np.mean(scores["normal"]), (machine, scores)


# ---------------------------------------------------------------------------------------------
# never lose data


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _lock(run: Path, pid: int, host: str | None = None) -> Path:
    lock = run / ".asd-run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))
    return lock


def test_a_second_run_on_a_locked_folder_is_one_error(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            lock = _lock(run, other.pid)
            before = _mtimes(run)
            result = _run(synth_root, tiny_checkpoint, run, "--k", "2")
        finally:
            other.kill()
    assert result.exit_code == 1 and result.output.count("Error:") == 1
    assert (
        f"{run} is in use by another asd run (pid {other.pid}" in result.output
        and "choose another --out" in result.output
    )
    assert _mtimes(run) == before and lock.is_file()
    _lock(run, 1, host="elsewhere")
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 1 and "host elsewhere" in result.output and f"delete {lock}" in result.output


def test_a_stale_lock_is_taken_over_with_a_message(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    pid = _dead_pid()
    _lock(run, pid)
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert f"Took over the stale lock of asd run pid {pid}" in result.output
    assert not (run / ".asd-run.lock").exists()


def test_use_clean_trains_on_the_clean_clips_and_redoes_fine_tuning(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = json.loads((run / "finetune" / "run.json").read_text())["data"]
    result = _run(synth_root, tiny_checkpoint, run, "--use-clean")
    assert result.exit_code == 0, result.output
    assert "finetune: up to date" not in result.output and "embed: up to date" not in result.output
    clean = sorted(synth_root.glob("*/supplemental/*_machine_*.wav"))
    after = json.loads((run / "finetune" / "run.json").read_text())
    assert after["config"]["use_clean"] and before["n_clean"] == 0
    assert after["data"]["n_clean"] == len(clean) == len(MACHINES)
    record = json.loads((run / "stages" / "finetune.json").read_text())
    assert record["key"] != json.loads((finished_run / "stages" / "finetune.json").read_text())["key"]
    again = _run(synth_root, tiny_checkpoint, run, "--use-clean")
    assert again.exit_code == 0 and again.output.count("up to date, skipped") == 4, again.output
    merged = _run(synth_root, tiny_checkpoint, run, "--merge-machines")  # one root: nothing to merge
    assert merged.exit_code == 2 and "No such option" in merged.output


def test_changed_options_remove_only_asdcli_files_from_finetune(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    mine = [
        run / "finetune" / "notes.txt",
        run / "finetune" / "adapter" / "my-adapter.txt",
        run / "finetune" / "state" / "keep.bin",
        run / "banks" / "my-bank-notes.txt",
    ]
    for path in mine:
        path.write_text("the user's\n")
    old_head = (run / "finetune" / "head.safetensors").read_bytes()
    result = _run(synth_root, tiny_checkpoint, run, "--lora-rank", "2", "--embedding", "pooled")
    assert result.exit_code == 0, result.output
    assert "Removed 5 file(s) of an earlier fine-tuning run" in result.output
    assert np.load(run / "embeddings" / "test.npz")["embeddings"].shape[1] == 64  # the backbone width
    assert all(p.read_text() == "the user's\n" for p in mine)
    assert (run / "finetune" / "head.safetensors").read_bytes() != old_head


def test_a_deleted_or_replaced_output_is_redone_not_skipped(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    score_file = run / "submission" / "anomaly_score_fan_section_00_test.csv"
    score_file.unlink()
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date, skipped") == 3 and "score: anomaly scores" in result.output
    assert score_file.read_bytes() == (finished_run / score_file.relative_to(run)).read_bytes()
    fan, bearing = run / "banks" / "bank_fan_section_00.npz", run / "banks" / "bank_bearing_section_00.npz"
    fan.write_bytes(bearing.read_bytes())  # a valid bank, but not the one recorded
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert "fit-bank: KNN banks" in result.output
    assert fan.read_bytes() == (finished_run / "banks" / fan.name).read_bytes()


def test_temp_files_of_killed_writers_go_with_the_next_write(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    banks = run / "banks"
    stale = [
        banks / f".bank_fan_section_00.npz.{_dead_pid()}-0123abcd.tmp",
        banks / ".bank_fan_section_00.npz.0123abcd.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a bank")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        try:
            live = banks / f".bank_fan_section_00.npz.{writer.pid}-0123abcd.tmp"
            live.write_bytes(b"being written")
            result = _run(synth_root, tiny_checkpoint, run, "--k", "2")
        finally:
            writer.kill()
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and live.is_file()  # a live writer's temp stays


def test_a_250_character_run_folder_name_works(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / ("r" * 250)
    result = _run(synth_root, tiny_checkpoint, run, "--no-finetune")
    assert result.exit_code == 0, result.output
    assert (run / "submission").is_dir()


def test_a_deleted_head_is_rewritten_from_the_resume_state_not_retrained(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "finetune" / "head.safetensors").unlink()
    record = json.loads((run / "stages" / "finetune.json").read_text())  # as an earlier version wrote it
    (run / "stages" / "finetune.json").write_text(
        json.dumps({"schema_version": 1, "stage": "finetune", "key": record["key"], "outputs": []})
    )
    (run / "stages" / "finetune.started").write_text(record["key"] + "\n")
    steps: list[int] = []
    monkeypatch.setattr(asdcli.finetune.epoch, "train_step", lambda *a, **k: steps.append(1))  # type: ignore[func-returns-value]
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert steps == [] and "resuming after epoch 1" in result.output
    for name in ("head.safetensors", "adapter/adapter_model.safetensors"):
        new, old = load_file(run / "finetune" / name), load_file(finished_run / "finetune" / name)
        assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    assert not (run / "stages" / "finetune.started").exists()


def test_stale_embedding_parts_go_by_name_and_other_files_stay(
    finished_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    stale = run / "embeddings" / ".parts-0123456789abcdef"
    stale.mkdir()
    (stale / "00000.npz").write_bytes(b"a part of another key")
    (stale / "notes.txt").write_text("the user's\n")
    (run / "stages" / "embed.json").unlink()
    result = _run(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 0, result.output
    assert not (stale / "00000.npz").exists() and (stale / "notes.txt").read_text() == "the user's\n"


def test_run_with_layers_pools_the_listed_layers_and_redoes_the_embedding(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from asdcli.artifacts import load_embeddings

    out = tmp_path / "run"
    assert _run(synth_root, tiny_checkpoint, out, "--no-finetune").exit_code == 0
    last = load_embeddings(out / "embeddings" / "train.npz")
    result = _run(synth_root, tiny_checkpoint, out, "--no-finetune", "--layers", "1,2")
    assert result.exit_code == 0, result.output
    both = load_embeddings(out / "embeddings" / "train.npz")
    assert both.meta["frontend"]["layers"] == "1,2" and both.dim == 2 * last.dim
    assert "embed: up to date" not in result.output  # another front end: embedded again, banks refitted
    wrong = _run(synth_root, tiny_checkpoint, tmp_path / "ft", "--layers", "1")
    assert wrong.exit_code == 1 and "--layers is for the frozen BEATs (asd run: with --no-finetune)" in wrong.output


def test_a_fine_tuning_run_loads_and_hashes_its_checkpoint_once(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import asdcli.artifacts
    import asdcli.frontend.beats.checkpoint

    monkeypatch.setenv("ASD_CACHE_DIR", str(tmp_path / "fresh-cache"))
    counts = {"load": 0, "hash": 0}
    real_load, real_hash = torch.load, asdcli.artifacts.sha256_file

    def load(f: object, *a: object, **kw: object) -> object:
        counts["load"] += Path(str(f)).resolve() == tiny_checkpoint.resolve()
        return real_load(f, *a, **kw)  # type: ignore[arg-type]

    def hash_file(path: object, *a: object, **kw: object) -> str:
        counts["hash"] += Path(str(path)).resolve() == tiny_checkpoint.resolve()
        return real_hash(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(asdcli.frontend.beats.checkpoint.torch, "load", load)
    monkeypatch.setattr(asdcli.artifacts, "sha256_file", hash_file)
    result = _run(synth_root, tiny_checkpoint, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert counts == {"load": 1, "hash": 1}  # fine-tuning and embedding share one loaded checkpoint
