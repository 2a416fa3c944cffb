"""Synthetic dataset: deterministic, official layout and names, and audible anomalies/domain shift."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_SYNTH
from scipy.signal import welch

from asdcli.data.audio import AudioConfig, load_clip
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip, parse_filename
from asdcli.errors import ConfigError, DataError
from asdcli.synth.dataset import SynthConfig, count_clips, make_dataset
from asdcli.synth.sounds import MACHINES

SMALL = SynthConfig(
    machines=("valve", "fan"),
    seconds=0.5,
    n_train_source=3,
    n_train_target=1,
    n_test_per_cell=1,
    n_supplemental=1,
    hidden_attributes=("valve",),
)


def test_layout_names_and_counts(synth_root: Path) -> None:
    clips = discover_clips([synth_root])
    assert len(clips) == count_clips(TINY_SYNTH) == 66
    cells = Counter((c.machine, c.split, c.domain, c.label, c.kind) for c in clips)
    for m in TINY_SYNTH.machines:
        assert cells[(m, "train", "source", "normal", "")] == 6
        assert cells[(m, "train", "target", "normal", "")] == 2
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                assert cells[(m, "test", domain, label, "")] == 3
        assert cells[(m, "supplemental", "", "", "machine")] == cells[(m, "supplemental", "", "", "noise")] == 1
    assert all(c.section == "00" and c.index for c in clips)
    assert all(parse_filename(c.name).form in ("dcase", "supplemental") for c in clips)
    fan_train = [c for c in clips if c.machine == "fan" and c.split == "train"]
    assert {c.attribute_dict["loc"] for c in fan_train if c.domain == "target"} == {"B"}
    assert all(
        c.attributes == () and "noAttribute" in c.name for c in clips if c.machine == "bearing" and c.kind != "noise"
    )
    assert (synth_root / "asd-synth.json").is_file()


def test_wav_format(synth_root: Path) -> None:
    info = sf.info(str(next(synth_root.glob("fan/train/*.wav"))))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)


def test_deterministic_bytes_and_seed_matters(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", SMALL)
    b = make_dataset(tmp_path / "b", SMALL)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b))
    c = make_dataset(tmp_path / "c", replace(SMALL, seed=1))
    assert all(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a, c))
    # every clip of a machine is different audio
    assert len({p.read_bytes() for p in a}) == len(a)


def test_rerun_replaces_and_refuses_foreign_folders(tmp_path: Path) -> None:
    root = tmp_path / "d"
    first = make_dataset(root, replace(SMALL, n_train_source=5))
    second = make_dataset(root, SMALL)
    assert len(first) - len(second) == 2 * 2  # 2 fewer source train clips on 2 machines
    assert sorted(root.glob("*/*/*.wav")) == second
    assert not list(root.rglob(".*.tmp"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        make_dataset(tmp_path / "mine", SMALL)
    with pytest.raises(DataError, match="is a file"):
        make_dataset(tmp_path / "mine" / "notes.txt", SMALL)


def test_rerun_never_removes_or_overwrites_a_clip_it_did_not_write(tmp_path: Path) -> None:
    from asdcli.synth.dataset import MARKER, dataset_is_current

    root = tmp_path / "d"
    made = make_dataset(root, SMALL)
    assert dataset_is_current(root, SMALL) and not dataset_is_current(root, replace(SMALL, seed=1))
    mine = root / "pump" / "train" / "section_00_my_recording.wav"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(made[0].read_bytes())
    with pytest.raises(DataError, match="section_00_my_recording.wav in .* was not written by asd demo"):
        make_dataset(root, replace(SMALL, n_train_source=5))
    assert mine.is_file() and sorted(root.glob("*/*/*.wav")) == sorted([*made, mine])  # nothing touched
    mine.unlink()
    edited = made[1].read_bytes()[:-2] + b"\x01\x02"  # one of ours, changed since: the user's now
    made[1].write_bytes(edited)
    assert not dataset_is_current(root, SMALL)
    with pytest.raises(DataError, match="changed since"):
        make_dataset(root, SMALL)
    assert made[1].read_bytes() == edited
    made[1].unlink()
    (root / MARKER).write_text('{"mine": true}\n')  # a record asd demo did not write
    with pytest.raises(DataError, match="not the record of a dataset asd demo wrote"):
        make_dataset(root, SMALL)
    assert all(p.is_file() for p in made[2:])


def test_every_machine_type_renders_finite_audio(tmp_path: Path) -> None:
    cfg = replace(SMALL, machines=tuple(MACHINES), hidden_attributes=())
    for path in make_dataset(tmp_path / "all", cfg):
        wave = load_clip(path, AudioConfig(seconds=None))
        assert wave.shape == (8000,) and np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 0.91


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(machines=("pump",)), "Unknown synthetic machine"),
        (dict(machines=()), "Unknown synthetic machine"),
        (dict(seconds=0.1), "--seconds"),
        (dict(n_train_source=0), "counts"),
        (dict(n_test_per_cell=-1), "counts"),
    ],
)
def test_config_validation(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**bad)


def _log_spectrum(clip: Clip) -> np.ndarray:
    _, power = welch(load_clip(clip.path, AudioConfig(seconds=None)), fs=16000, nperseg=512)
    return np.log10(power + 1e-12)  # (257,)


def test_anomalies_and_target_domain_differ_on_log_spectrum(synth_root: Path) -> None:
    clips = discover_clips([synth_root], splits=["train", "test"])
    for machine in TINY_SYNTH.machines:
        mine = [c for c in clips if c.machine == machine]
        train = np.stack([_log_spectrum(c) for c in mine if c.split == "train" and c.domain == "source"])
        mean, std = train.mean(axis=0), train.std(axis=0) + 1e-3

        def distance(c: Clip, mean: np.ndarray = mean, std: np.ndarray = std) -> float:
            return float(np.sqrt(np.mean(((_log_spectrum(c) - mean) / std) ** 2)))

        test = [c for c in mine if c.split == "test" and c.domain == "source"]
        normal = np.mean([distance(c) for c in test if c.label == "normal"])
        anomaly = np.mean([distance(c) for c in test if c.label == "anomaly"])
        assert anomaly > 1.3 * normal, (machine, normal, anomaly)

        target = np.stack([_log_spectrum(c) for c in mine if c.split == "train" and c.domain == "target"])
        shift = np.abs(target.mean(axis=0) - mean).mean()
        spread = np.abs(train[:3].mean(axis=0) - train[3:].mean(axis=0)).mean()
        assert shift > 1.5 * spread, (machine, shift, spread)


def test_cli_demo_make_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asdcli.cli.main import app

    root = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--make-data", str(root), "--seed", "3", "--seconds", "0.25"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(root)
    assert "fan,40,4,10,10,10,10,4" in result.stderr
    assert len(discover_clips([root])) == count_clips(SynthConfig())
    assert sf.info(str(next(root.glob("fan/test/*.wav")))).frames == 4000
    bad = CliRunner().invoke(app, ["demo", "--make-data", str(tmp_path / "demo" / "fan" / "train")])
    assert bad.exit_code == 1 and "not empty" in bad.stderr
    # a bare `asd demo` now runs the whole demo in ./asd-demo, so check a usage error instead
    assert CliRunner().invoke(app, ["demo", "--make-data", str(tmp_path / "short"), "--seconds", "0.1"]).exit_code == 2
