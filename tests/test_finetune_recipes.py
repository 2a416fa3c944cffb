"""Recipes of the top DCASE 2025 systems: several dataset roots, attribute+domain labels, sub-centre
AAM, supplemental clean clips, full fine-tuning with layer-wise lr decay. Label maps as pure
functions, the sub-centre loss by hand, and each recipe end to end (with resume equivalence) on
the tiny random model and synthetic data."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from asdcli.cli.main import app
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip
from asdcli.errors import ConfigError
from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.head import CosineClassifier, aam_logits, aam_loss
from asdcli.finetune.labels import (
    build_labels,
    label_name,
    machine_classes,
    root_labels,
    training_data,
)
from asdcli.finetune.loop import finetune
from asdcli.finetune.model import build_model, layer_depth, param_groups
from asdcli.finetune.run_dir import load_adapter_embedder, read_run
from asdcli.frontend.beats import load_beats
from asdcli.synth.dataset import SynthConfig, make_dataset


def _clip(
    machine: str, attrs: tuple[tuple[str, str], ...] = (), domain: str = "source", kind: str = "", split: str = "train"
) -> Clip:
    return Clip(Path(f"/d/{machine}/{split}/x.wav"), machine, "00", domain, split, "normal", "0000", attrs, kind)


# ------------------------------------------------------------------------------------------ labels


def test_attribute_domain_labels_add_the_domain() -> None:
    clips = [
        _clip("fan", (("vel", "6"),), "source"),
        _clip("fan", (("vel", "6"),), "target"),
        _clip("bearing", (), "target"),
        _clip("fan", (("vel", "6"),), "", kind="machine", split="supplemental"),
    ]
    assert [label_name(c, "attribute+domain") for c in clips] == [
        "fan|vel_6|source",
        "fan|vel_6|target",
        "bearing|target",
        "fan|vel_6",
    ]
    assert [label_name(c, "attribute") for c in clips] == ["fan|vel_6", "fan|vel_6", "bearing", "fan|vel_6"]
    y, classes = build_labels(clips[:3], "attribute+domain")
    assert classes == ["bearing|target", "fan|vel_6|source", "fan|vel_6|target"] and y.tolist() == [1, 2, 0]


def test_root_labels_are_folder_names_lengthened_until_distinct() -> None:
    assert root_labels([Path("/data/2023/dev"), Path("/data/2024/dev"), Path("/data/2025/add")]) == [
        "2023/dev",
        "2024/dev",
        "add",
    ]
    assert root_labels([Path("a/x/dev"), Path("b/x/dev")]) == ["a/x/dev", "b/x/dev"]
    assert root_labels([Path("dev"), Path("dev")]) == ["root0", "root1"]
    assert root_labels([Path("data/dev")]) == ["dev"]


def test_machine_names_are_namespaced_only_where_they_collide() -> None:
    roots = {"2023/dev": ["fan", "bearing"], "2024/dev": ["fan", "valve"]}
    assert machine_classes(roots, merge=False) == {
        ("2023/dev", "fan"): "2023/dev/fan",
        ("2023/dev", "bearing"): "bearing",
        ("2024/dev", "fan"): "2024/dev/fan",
        ("2024/dev", "valve"): "valve",
    }
    assert set(machine_classes(roots, merge=True).values()) == {"fan", "bearing", "valve"}


@pytest.fixture(scope="module")
def second_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another synthetic dataset: fan (as in synth_root, other recordings) and valve."""
    root = tmp_path_factory.mktemp("synth2") / "add"
    make_dataset(
        root,
        SynthConfig(
            seed=1,
            machines=("fan", "valve"),
            seconds=1.0,
            n_train_source=6,
            n_train_target=2,
            n_test_per_cell=1,
            n_supplemental=1,
        ),
    )
    return root


def test_training_data_of_two_roots(synth_root: Path, second_root: Path) -> None:
    sources = [(r, discover_clips([r])) for r in (synth_root, second_root)]
    data = training_data(sources, use_clean=True, noise_mix=True, merge_machines=False)
    machines = {c.machine for c in data.clips}
    assert machines == {"dev/fan", "add/fan", "gearbox", "bearing", "valve"}
    assert [r["label"] for r in data.roots] == ["dev", "add"]
    assert data.roots[0]["machines"] == {"bearing": "bearing", "fan": "dev/fan", "gearbox": "gearbox"}
    assert [r["n_train"] for r in data.roots] == [24, 16] and [r["n_clean"] for r in data.roots] == [3, 2]
    assert data.n_clean == 5 and len(data.noise) == 5
    assert all(len(r["fingerprint"]) == 64 for r in data.roots)
    assert data.roots[0]["fingerprint"] != data.roots[1]["fingerprint"]
    merged = training_data(sources, use_clean=False, noise_mix=False, merge_machines=True)
    assert {c.machine for c in merged.clips} == {"fan", "gearbox", "bearing", "valve"}
    assert merged.n_clean == 0 and not merged.noise and all(c.split == "train" for c in merged.clips)
    # the same root twice: its clips count once, under the first
    twice = training_data([sources[0], sources[0]], use_clean=False, noise_mix=False, merge_machines=False)
    assert [r["n_train"] for r in twice.roots] == [24, 0] and {c.machine for c in twice.clips} == {
        "fan",
        "gearbox",
        "bearing",
    }


# ------------------------------------------------------------------------------------ sub-centres


def test_subcentre_cosine_and_loss_match_hand_computation() -> None:
    clf = CosineClassifier(embedding_dim=2, n_classes=2, subcentres=2)
    with torch.no_grad():  # rows: class 0 (two sub-centres), class 1 (two sub-centres)
        clf.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, -1.0]]))
    emb = torch.tensor([[3.0, 4.0], [2.0, -1.0]])
    cos = clf(emb)
    # emb0 / 5: cos with (1,0) = 0.6, (0,1) = 0.8, (-1,0) = -0.6, (1,-1)/sqrt2 = -1/(5 sqrt2)
    # emb1 / sqrt5: cos with (1,0) = 2/sqrt5, (0,1) = -1/sqrt5, (-1,0) = -2/sqrt5, (1,-1)/sqrt2 = 3/sqrt10
    r2, r5 = math.sqrt(2.0), math.sqrt(5.0)
    best = [[max(0.6, 0.8), max(-0.6, -1 / (5 * r2))], [max(2 / r5, -1 / r5), max(-2 / r5, 3 / math.sqrt(10.0))]]
    torch.testing.assert_close(cos, torch.tensor(best), rtol=0, atol=1e-6)
    labels = torch.tensor([0, 1])
    m, s = 0.2, 30.0
    rows = [
        [s * math.cos(math.acos(best[0][0]) + m), s * best[0][1]],
        [s * best[1][0], s * math.cos(math.acos(best[1][1]) + m)],
    ]
    torch.testing.assert_close(aam_logits(cos, labels, m, s), torch.tensor(rows), rtol=0, atol=1e-4)
    ce = [-rows[0][0] + math.log(sum(map(math.exp, rows[0]))), -rows[1][1] + math.log(sum(map(math.exp, rows[1])))]
    assert float(aam_loss(cos.detach(), labels, m, s)) == pytest.approx(sum(ce) / 2, abs=1e-3)


def test_one_subcentre_is_the_plain_head_bit_for_bit() -> None:
    torch.manual_seed(5)
    plain_weight = torch.empty(4, 16)
    torch.nn.init.xavier_uniform_(plain_weight)
    torch.manual_seed(5)
    clf = CosineClassifier(16, 4, subcentres=1)
    assert torch.equal(clf.weight.detach(), plain_weight)  # same initialisation draws
    emb, labels = torch.randn(8, 16), torch.randint(0, 4, (8,))
    plain_cos = (F.normalize(emb, dim=-1) @ F.normalize(plain_weight, dim=-1).T).clamp(-1.0, 1.0)
    assert torch.equal(clf(emb), plain_cos)
    assert torch.equal(aam_loss(clf(emb), labels), aam_loss(plain_cos, labels))


# ---------------------------------------------------------------------------- full fine-tuning


def test_layer_decay_scales_by_depth(tiny_checkpoint: Path) -> None:
    assert layer_depth("backbone.patch_embedding.weight", 2) == 0
    assert layer_depth("backbone.encoder.pos_conv.0.bias", 2) == 0
    assert layer_depth("backbone.encoder.layers.0.fc1.weight", 2) == 1
    assert layer_depth("backbone.base_model.model.encoder.layers.1.self_attn.q_proj.lora_A.default.weight", 2) == 2
    assert layer_depth("head.fc1.weight", 2) == layer_depth("classifier.weight", 2) == 3
    cfg = FinetuneConfig(checkpoint=tiny_checkpoint, full_finetune=True, layer_decay=0.5, embedding_dim=8)
    model = build_model(load_beats(tiny_checkpoint).model, 64, 3, cfg)
    groups = param_groups(model, 2, 0.5)
    assert [g["lr_scale"] for g in groups] == [0.125, 0.25, 0.5, 1.0]
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    assert all(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(ConfigError, match="--layer-decay"):
        FinetuneConfig(checkpoint=tiny_checkpoint, layer_decay=0.5)


# ------------------------------------------------------------------- end to end, resume per recipe

RECIPES = {
    "attribute+domain": dict(labels="attribute+domain"),
    "subcentres": dict(subcentres=3),
    "use-clean": dict(use_clean=True),
    "full+decay": dict(full_finetune=True, layer_decay=0.7, lr=1e-3),
    "two-roots": dict(),
}


def _cfg(ckpt: Path, **kw: object) -> FinetuneConfig:
    base = dict(
        checkpoint=ckpt,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        seconds=1.0,
        val_fraction=0.2,
        lora_rank=2,
        lora_alpha=4.0,
        embedding_dim=8,
        device="cpu",
        mixup=0.4,
        specaugment=True,
    )
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    files = [run / "head.safetensors", run / "backbone.safetensors", run / "adapter" / "adapter_model.safetensors"]
    return {f"{f.name}:{k}": v for f in files if f.is_file() for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_trains_and_resumes_to_the_same_weights(recipe: str, synth_root: Path, second_root: Path,
                                                       tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    cfg = _cfg(tiny_checkpoint, **RECIPES[recipe])
    roots = [synth_root, second_root] if recipe == "two-roots" else [synth_root]
    data = training_data(
        [(r, discover_clips([r])) for r in roots],
        use_clean=cfg.use_clean,
        noise_mix=cfg.noise_mix,
        merge_machines=cfg.merge_machines,
    )
    ref = finetune(data, cfg, tmp_path / "ref")

    class Killed(Exception):
        pass

    def kill(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 1):
            raise Killed

    with pytest.raises(Killed):
        finetune(data, cfg, tmp_path / "b", on_step=kill)
    finetune(data, cfg, tmp_path / "b", resume=True)
    a, b = _weights(ref), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = read_run(ref)
    assert run["history"][-1]["train_loss"] < run["history"][0]["train_loss"] or recipe == "full+decay"
    classes = run["labels"]["classes"]
    if recipe == "attribute+domain":
        assert all(c.endswith(("|source", "|target")) for c in classes)
    if recipe == "subcentres":
        assert a["head.safetensors:classifier.weight"].shape == (3 * len(classes), 8)
        assert run["model"]["aam"]["subcentres"] == 3
    if recipe == "use-clean":
        assert run["data"]["n_clean"] == 3 and run["data"]["n_train"] + run["data"]["n_val"] == 27
    if recipe == "two-roots":
        assert {"dev/fan", "add/fan", "valve"} <= set(classes)
        assert [r["path"] for r in run["data"]["roots"]] == [str(synth_root), str(second_root)]
    if recipe == "full+decay":
        assert run["model"]["kind"] == "full" and not (ref / "adapter").exists()


def test_full_finetune_changes_the_backbone_and_embed_reproduces_it(synth_root: Path, tiny_checkpoint: Path,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    from asdcli.data.audio import AudioConfig, load_clip
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig
    from asdcli.frontend.features import beats_fbank

    out = tmp_path / "full"
    args = [
        "finetune",
        str(synth_root),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seconds",
        "1",
        "--batch-size",
        "8",
        "--embedding-dim",
        "8",
        "--device",
        "cpu",
        "--full-finetune",
        "--layer-decay",
        "0.8",
        "--lr",
        "1e-3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    trained = load_file(str(out / "backbone.safetensors"))
    original = dict(load_beats(tiny_checkpoint).model.named_parameters())
    assert trained.keys() == original.keys()
    changed = [k for k in trained if not torch.equal(trained[k], original[k])]
    assert any(".layers.0." in k for k in changed) and any(".layers.1." in k for k in changed)
    embedder, meta = load_adapter_embedder(out, load_beats(tiny_checkpoint), None)
    assert all(torch.equal(v, trained[k]) for k, v in embedder.backbone.named_parameters())
    clips = discover_clips([synth_root / "fan" / "test"])[:3]
    emb = embed_clips(clips, EmbedConfig(checkpoint=tiny_checkpoint, adapter=out, seconds=1.0, device="cpu"))
    wave = torch.from_numpy(np.stack([load_clip(c.path, AudioConfig(seconds=1.0)) for c in clips]))
    with torch.no_grad():
        want = embedder(beats_fbank(wave)).numpy()
    assert emb.vectors.shape == (3, 8) and meta["embedding_dim"] == 8
    np.testing.assert_allclose(emb.vectors, want, rtol=1e-5, atol=1e-6)


def test_cli_two_roots_with_merge(synth_root: Path, second_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    args = [
        "finetune",
        str(synth_root),
        str(second_root),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seconds",
        "1",
        "--batch-size",
        "16",
        "--lora-rank",
        "2",
        "--embedding-dim",
        "8",
        "--device",
        "cpu",
        "--merge-machines",
        "--labels",
        "attribute+domain",
        "--subcentres",
        "2",
        "--use-clean",
        "--num-workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert run["config"]["merge_machines"] and run["data"]["machines"] == ["bearing", "fan", "gearbox", "valve"]
    assert [r["label"] for r in run["data"]["roots"]] == ["dev", "add"]
    assert run["data"]["n_clean"] == 5


def test_use_clean_without_clean_clips_is_an_error(tiny_checkpoint: Path, synth_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for machine in ("fan", "gearbox"):
        (data / machine / "train").mkdir(parents=True)
        for src in sorted((synth_root / machine / "train").iterdir())[:4]:
            (data / machine / "train" / src.name).write_bytes(src.read_bytes())
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            str(data),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--use-clean",
            "--seconds",
            "1",
        ],
    )
    assert result.exit_code == 1 and "--use-clean needs supplemental clean machine clips" in result.output
    assert dataclasses.replace(_cfg(tiny_checkpoint), use_clean=False).use_clean is False
