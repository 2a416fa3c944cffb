"""LoRA fine-tuning on a tiny random BEATs and 1 s synthetic clips: learning, artifacts, adapter
round trip, resume equivalence, frozen backbone, CLI."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from asdcli.cli.main import app
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip
from asdcli.errors import ArtifactMismatch, ConfigError, DataError
from asdcli.finetune.loop import (
    FinetuneConfig,
    build_labels,
    build_model,
    finetune,
    lr_at,
    split_train_val,
    train_step,
)
from asdcli.finetune.run_dir import load_adapter_embedder, read_run, write_run_artifacts
from asdcli.finetune.trainer import Processes, Trainer, make_trainer
from asdcli.frontend.beats import load_beats, tiny_beats_config
from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
from asdcli.frontend.features import beats_fbank

SR = 16000
MACHINES = {"fan": (300.0, 0.03), "pump": (1200.0, 0.1), "valve": (3500.0, 0.4)}  # tone (Hz), level
CLIPS_PER_MACHINE = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 machines x 16 one-second train clips: a machine-specific tone and level (jittered) + noise."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    for machine, (f0, level) in MACHINES.items():
        folder = root / machine / "train"
        folder.mkdir(parents=True)
        for i in range(CLIPS_PER_MACHINE):
            domain = "target" if i == 0 else "source"
            f = f0 * rng.uniform(0.9, 1.1)
            tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
            wave = level * (tone + 0.2 * rng.standard_normal(SR)) * rng.uniform(0.8, 1.25)
            name = f"section_00_{domain}_train_normal_{i:04d}_spd_{i % 2}.wav"
            sf.write(folder / name, wave.astype(np.float32), SR, subtype="PCM_16")
    supplemental = root / "fan" / "supplemental"
    supplemental.mkdir()
    for i in range(3):
        noise = 0.2 * rng.standard_normal(SR)
        sf.write(supplemental / f"section_00_noise_{i:04d}_.wav", noise.astype(np.float32), SR, subtype="PCM_16")
    return root


def _cfg(ckpt: Path, **kw: object) -> FinetuneConfig:
    base = dict(
        checkpoint=ckpt,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        seconds=1.0,
        val_fraction=0.25,
        lora_rank=4,
        lora_alpha=8.0,
        embedding_dim=16,
        device="cpu",
    )
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def _cpu_trainer(model: torch.nn.Module, cfg: FinetuneConfig) -> Trainer:
    return make_trainer(model, cfg, Processes(rank=0, world=1, device=torch.device("cpu")), n_layers=2)


def _train_clips(root: Path) -> list[Clip]:
    return discover_clips([root], splits={"train"})


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    out = {f"adapter.{k}": v for k, v in load_file(str(run / "adapter" / "adapter_model.safetensors")).items()}
    out.update({f"head.{k}": v for k, v in load_file(str(run / "head.safetensors")).items()})
    return out


@pytest.fixture(scope="module")
def trained_run(ckpt: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    return finetune(_train_clips(data_root), _cfg(ckpt), out)


def test_loss_falls_and_held_out_accuracy_beats_chance(trained_run: Path) -> None:
    run = read_run(trained_run)
    hist = run["history"]
    assert len(hist) == 3
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_accuracy"] >= 0.8  # chance is 1/3
    assert run["data"]["n_val"] == 12 and run["data"]["n_train"] == 36
    assert run["labels"]["classes"] == ["fan", "pump", "valve"]


def test_artifacts_and_run_record(trained_run: Path, ckpt: Path) -> None:
    for rel in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "head.safetensors",
        "run.json",
        "state/state.safetensors",
    ):
        assert (trained_run / rel).is_file(), rel
    assert not list(trained_run.rglob("*.tmp"))
    run = read_run(trained_run)
    assert run["checkpoint"]["sha256"] == load_beats(ckpt).sha256
    assert run["checkpoint"]["cfg"] == tiny_beats_config()
    assert run["config"]["lora_rank"] == 4 and run["seed"] == 0
    assert {"torch", "peft", "accelerate", "asdcli"} <= set(run["versions"])
    keys = load_file(str(trained_run / "adapter" / "adapter_model.safetensors"))
    assert all(("q_proj" in k or "k_proj" in k or "v_proj" in k) and "lora_" in k for k in keys)
    assert len(keys) == 2 * 3 * 2  # 2 layers x q/k/v x (A, B)


def test_peft_can_load_the_adapter(trained_run: Path, ckpt: Path) -> None:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_beats(ckpt).model, str(trained_run / "adapter"))
    b = [v for k, v in model.named_parameters() if "lora_B" in k]
    assert b and any(v.abs().sum() > 0 for v in b)


def test_adapter_round_trip_gives_identical_embeddings(ckpt: Path, tmp_path: Path) -> None:
    cfg = _cfg(ckpt)
    loaded = load_beats(ckpt)
    model = build_model(loaded.model, 64, 3, cfg)
    trainer = _cpu_trainer(model, dataclasses.replace(cfg, lr=1e-2))
    wave = torch.randn(4, SR) * 0.1
    model.train()
    for _ in range(2):
        train_step(trainer, wave, torch.tensor([0, 1, 2, 0]), cfg)
    record = {
        "schema_version": 1,
        "kind": "asdcli-finetune-run",
        "labels": {"mode": "machine"},
        "checkpoint": {"path": str(ckpt), "sha256": loaded.sha256},
    }
    write_run_artifacts(tmp_path, model.backbone, model.head, model.classifier, record)
    model.eval()
    fbank = beats_fbank(torch.randn(3, SR) * 0.1)
    with torch.no_grad():
        _, emb, pooled = model(fbank)
        for kind, want in (("head", emb), (None, emb), ("pooled", pooled)):
            embedder, meta = load_adapter_embedder(tmp_path, load_beats(ckpt), kind)
            assert torch.equal(embedder(fbank), want)
            assert meta["embedding"] == (kind or "head") and meta["embedding_dim"] == want.shape[1]
            assert meta["adapter_id"]


def test_embed_uses_the_run_folder(trained_run: Path, ckpt: Path, data_root: Path) -> None:
    from asdcli.data.audio import AudioConfig, load_clip
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig

    clips = _train_clips(data_root)[:5]
    emb = embed_clips(clips, EmbedConfig(checkpoint=ckpt, adapter=trained_run, seconds=1.0, device="cpu"))
    assert emb.vectors.shape == (5, 16)
    assert emb.meta["adapter_id"] == read_run(trained_run)["adapter_id"]
    embedder, _ = load_adapter_embedder(trained_run, load_beats(ckpt), None)
    wave = torch.from_numpy(np.stack([load_clip(c.path, AudioConfig(seconds=1.0)) for c in clips]))
    with torch.no_grad():
        want = embedder(beats_fbank(wave)).numpy()
    np.testing.assert_allclose(emb.vectors, want, rtol=1e-5, atol=1e-6)


def test_only_lora_and_head_parameters_change(ckpt: Path) -> None:
    cfg = _cfg(ckpt)
    original = {k: v.clone() for k, v in load_beats(ckpt).model.state_dict().items()}
    model = build_model(load_beats(ckpt).model, 64, 3, cfg)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = _cpu_trainer(model, dataclasses.replace(cfg, lr=1e-2))
    model.train()
    modes = {n: m.training for n, m in model.named_modules()}
    assert all(t for n, t in modes.items() if n.endswith("lora_dropout.default"))  # LoRA dropout on
    assert not any(t for n, t in modes.items() if n.startswith("backbone.") and "lora_" not in n)  # backbone eval
    for _ in range(3):
        train_step(trainer, torch.randn(4, SR) * 0.1, torch.tensor([0, 1, 2, 1]), cfg)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed and all("lora_" in k or k.startswith(("head.", "classifier.")) for k in changed)
    assert any("lora_B" in k for k in changed) and any(k.startswith("head.") for k in changed)
    base = model.backbone.get_base_model().state_dict()
    for k, v in original.items():
        own = base.get(k, base.get(k.replace("_proj.", "_proj.base_layer.")))
        assert own is not None and torch.equal(own, v), k


def test_killed_mid_epoch_and_resumed_matches_uninterrupted(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    clips = _train_clips(data_root)
    cfg = _cfg(ckpt, epochs=2, specaugment=True, mixup=0.4, lora_dropout=0.2)
    ref = finetune(clips, cfg, tmp_path / "ref")

    class Killed(Exception):
        pass

    def kill(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):
            raise Killed

    with pytest.raises(Killed):
        finetune(clips, cfg, tmp_path / "b", on_step=kill)
    assert not (tmp_path / "b" / "run.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        finetune(clips, cfg, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"made with --lr 0\.003 \(now 0\.001\); resume with the same options"):
        finetune(clips, dataclasses.replace(cfg, lr=1e-3), tmp_path / "b", resume=True)
    finetune(clips, cfg, tmp_path / "b", resume=True)
    a, b = _tensors(ref), _tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = read_run(ref)["history"], read_run(tmp_path / "b")["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    stamp = (tmp_path / "b" / "run.json").stat().st_mtime_ns
    finetune(clips, cfg, tmp_path / "b", resume=True)  # finished: nothing to do
    assert (tmp_path / "b" / "run.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"made with --epochs 2 \(now 3\);"):
        finetune(clips, dataclasses.replace(cfg, epochs=3), tmp_path / "b", resume=True)


def test_noise_mix_trains_with_supplemental_noise(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    noise = [c for c in discover_clips([data_root], splits={"supplemental"}) if c.kind == "noise"]
    assert len(noise) == 3
    cfg = _cfg(ckpt, epochs=1, noise_mix=True)
    run = read_run(finetune(_train_clips(data_root), cfg, tmp_path / "noisy", noise_clips=noise))
    assert run["data"]["n_noise"] == 3 and run["config"]["noise_mix"] is True
    with pytest.raises(DataError, match="--noise-mix"):
        finetune(_train_clips(data_root), cfg, tmp_path / "no_noise")


def test_bf16_mixed_precision_trains_on_cpu(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    run = read_run(finetune(_train_clips(data_root), _cfg(ckpt, epochs=1, mixed_precision="bf16"), tmp_path / "bf16"))
    assert np.isfinite(run["history"][0]["train_loss"]) and run["config"]["mixed_precision"] == "bf16"
    assert load_file(str(tmp_path / "bf16" / "head.safetensors"))["fc1.weight"].dtype == torch.float32


def test_adapter_for_another_checkpoint_is_a_mismatch(trained_run: Path, tmp_path: Path) -> None:
    other = load_beats(make_tiny_checkpoint(tmp_path / "other.pt", seed=1))
    with pytest.raises(ArtifactMismatch, match="--checkpoint"):
        load_adapter_embedder(trained_run, other, None)


def test_labels_and_split() -> None:
    def clip(machine: str, attrs: tuple[tuple[str, str], ...]) -> Clip:
        return Clip(Path(f"{machine}.wav"), machine, "00", "source", "train", "normal", "0000", attrs, "")

    clips = [clip("fan", (("spd", "1"),)), clip("fan", (("spd", "2"),)), clip("slider", ())]
    y, classes = build_labels(clips, "machine")
    assert classes == ["fan", "slider"] and y.tolist() == [0, 0, 1]
    y, classes = build_labels(clips, "attribute")
    assert classes == ["fan|spd_1", "fan|spd_2", "slider"] and y.tolist() == [0, 1, 2]
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    tr, va = split_train_val(labels, 0.2, seed=3)
    assert np.bincount(labels[va], minlength=3).tolist() == [2, 4, 0]
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(31))
    assert split_train_val(labels, 0.2, seed=3)[1].tolist() == va.tolist()


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(s, 100, 1e-3, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and lrs[-1] < 1e-5


def test_config_rejects_bad_values(ckpt: Path) -> None:
    with pytest.raises(ConfigError, match="--labels"):
        _cfg(ckpt, labels="domain")
    with pytest.raises(ConfigError, match="--mixed-precision"):
        _cfg(ckpt, mixed_precision="fp8")


def test_cli_finetune_writes_a_run(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_run"
    args = [
        "finetune",
        str(data_root),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seconds",
        "1",
        "--batch-size",
        "12",
        "--lora-rank",
        "2",
        "--embedding-dim",
        "8",
        "--device",
        "cpu",
        "--val-fraction",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert run["config"]["embedding_dim"] == 8 and run["history"][0]["val_accuracy"] is None
    assert result.stdout.strip() == str(out)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--resume" in again.output
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0


def test_cli_missing_checkpoint_is_one_line_error(data_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["finetune", str(data_root), "--checkpoint", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): global batch 2x6 = one process with batch 12."""
    import os
    import subprocess
    import sys

    common = [
        "finetune",
        str(data_root),
        "--checkpoint",
        str(ckpt),
        "--epochs",
        "2",
        "--seconds",
        "1",
        "--lr",
        "3e-3",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0",
        "--embedding-dim",
        "16",
        "--val-fraction",
        "0.25",
        "--device",
        "cpu",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "asdcli",
        *common,
        "--batch-size",
        "6",
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "ddp")]
    single = CliRunner().invoke(app, [*common, "--batch-size", "12", "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    assert read_run(tmp_path / "ddp")["world_size"] == 2
    a, b = _tensors(tmp_path / "ddp"), _tensors(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_fine_tuning_options_are_declared_once_from_the_config_fields() -> None:
    """Every FinetuneConfig field (but the checkpoint) is one option of `asd finetune` and `asd run`
    with the field's default; --num-workers stays a hidden alias of --workers."""
    import typer

    from asdcli.finetune.config import option_flag

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    fields = [f for f in dataclasses.fields(FinetuneConfig) if f.name != "checkpoint"]
    for name, skipped in (("finetune", set()), ("run", {"merge_machines"})):
        params = {p.name: p for p in commands[name].params}
        for f in fields:
            if f.name in skipped:
                assert f.name not in params
                continue
            assert params[f.name].opts == [option_flag(f.name)] and params[f.name].default == f.default, f.name
        assert params["alias__num_workers"].hidden and params["alias__num_workers"].opts == ["--num-workers"]
    assert option_flag("num_workers") == "--workers" and option_flag("lora_alpha") == "--lora-alpha"


_WRITE_HEAD = """
import sys, torch
from torch import nn
from asdcli.finetune.head import CosineClassifier, EmbeddingHead
from asdcli.finetune.run_dir import write_run_artifacts
torch.manual_seed(0)
write_run_artifacts(sys.argv[1], nn.Linear(4, 4), EmbeddingHead(4, 6, 3), CosineClassifier(3, 5, 2),
                    {"schema_version": 1, "kind": "asdcli-finetune-run"})
"""


def test_the_same_run_written_by_two_processes_has_the_same_adapter_id(tmp_path: Path) -> None:
    """safetensors orders several metadata keys differently in each process: the head's fields
    are one key, so identical runs get identical files and adapter ids (reproducible from a seed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run in runs:
        subprocess.run([sys.executable, "-c", _WRITE_HEAD, str(run)], check=True, env=env, timeout=120)
    heads = {(run / "head.safetensors").read_bytes() for run in runs}
    assert len(heads) == 1
    assert len({read_run(run)["adapter_id"] for run in runs}) == 1


def test_a_head_written_with_one_metadata_key_per_field_still_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from asdcli.finetune.run_dir import load_head

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", _WRITE_HEAD, str(tmp_path)], check=True, env=env, timeout=120)
    old = {"in_dim": "4", "hidden_dim": "6", "embedding_dim": "3", "n_classes": "5", "subcentres": "2"}
    save_file(load_file(tmp_path / "head.safetensors"), tmp_path / "head.safetensors", metadata=old)
    head, classifier = load_head(tmp_path, in_dim=4)
    assert (head.in_dim, head.hidden_dim, head.embedding_dim) == (4, 6, 3) and classifier.shape == (10, 3)


def test_a_head_whose_fields_do_not_fit_its_tensors_is_a_one_line_error(tmp_path: Path) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from asdcli.errors import ArtifactError
    from asdcli.finetune.run_dir import load_head

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", _WRITE_HEAD, str(tmp_path)], check=True, env=env, timeout=120)
    path = tmp_path / "head.safetensors"
    with safe_open(str(path), framework="pt") as f:
        fields = json.loads(f.metadata()["head"])
    save_file(load_file(path), path, metadata={"head": json.dumps({**fields, "hidden_dim": "7"})})
    with pytest.raises(ArtifactError) as err:
        load_head(tmp_path)
    assert "\n" not in str(err.value) and "corrupt or incomplete" in str(err.value)
