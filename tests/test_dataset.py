"""File-name parser (every form in spec/dcase.md) and dataset discovery (both layouts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asdcli.data.dataset import discover_clips, group_by_machine
from asdcli.data.names import Clip, parse_filename, require_field
from asdcli.errors import ConfigError, DataError

# name -> (section, domain, split, label, index, attributes, kind, form)
NAMES = [
    (
        "section_00_source_train_normal_0000_car_A2_spd_28V_mic_1_noise_1.wav",
        (
            "00",
            "source",
            "train",
            "normal",
            "0000",
            (("car", "A2"), ("spd", "28V"), ("mic", "1"), ("noise", "1")),
            "",
            "dcase",
        ),
    ),
    (
        "section_00_target_train_normal_0009_pro_A_vel_12_loc_B.wav",
        ("00", "target", "train", "normal", "0009", (("pro", "A"), ("vel", "12"), ("loc", "B")), "", "dcase"),
    ),
    (
        "section_00_source_test_anomaly_0049_vol_12000.wav",
        ("00", "source", "test", "anomaly", "0049", (("vol", "12000"),), "", "dcase"),
    ),
    ("section_00_target_test_normal_0001_noAttribute.wav", ("00", "target", "test", "normal", "0001", (), "", "dcase")),
    (
        "section_00_source_train_normal_0123_m-n_W_v_0.5.wav",  # '-' and '.' in keys/values
        ("00", "source", "train", "normal", "0123", (("m-n", "W"), ("v", "0.5")), "", "dcase"),
    ),
    (
        "section_02_source_test_normal_0000.wav",  # 2021-2024, no attribute part
        ("02", "source", "test", "normal", "0000", (), "", "dcase"),
    ),
    (
        "section_00_source_train_normal_0000_A1Spd28VMic1.wav",  # lone token kept as a key
        ("00", "source", "train", "normal", "0000", (("A1Spd28VMic1", ""),), "", "dcase"),
    ),
    ("section_00_0000.wav", ("00", "", "", "", "0000", (), "", "anonymous")),
    ("section_00_0199.wav", ("00", "", "", "", "0199", (), "", "anonymous")),
    ("section_00_machine_0001_.wav", ("00", "", "supplemental", "", "0001", (), "machine", "supplemental")),
    ("section_00_noise_0042.wav", ("00", "", "supplemental", "", "0042", (), "noise", "supplemental")),
    (
        "section_00_source_supplemental_machine_0003_vel_6.wav",
        ("00", "source", "supplemental", "", "0003", (("vel", "6"),), "machine", "supplemental"),
    ),
    ("normal_id_00_00000000.wav", ("00", "", "", "normal", "00000000", (), "", "dcase2020")),
    ("anomaly_id_06_00000123.wav", ("06", "", "", "anomaly", "00000123", (), "", "dcase2020")),
    ("id_05_00000000.wav", ("05", "", "", "", "00000000", (), "", "anonymous")),
    ("SECTION_00_source_train_normal_0000.WAV", ("", "", "", "", "", (), "", "unknown")),
    ("recording 1.wav", ("", "", "", "", "", (), "", "unknown")),
    ("section_00_source_foo_0000.wav", ("00", "", "", "", "", (), "", "unknown")),
    ("section_xx_source_train_normal_0000.wav", ("", "", "", "", "", (), "", "unknown")),
    ("section_00_source_train_0000_a_1.wav", ("00", "source", "train", "", "0000", (("a", "1"),), "", "unknown")),
    ("", ("", "", "", "", "", (), "", "unknown")),
]


@pytest.mark.parametrize(("name", "expected"), NAMES, ids=[n or "<empty>" for n, _ in NAMES])
def test_parse_filename(name: str, expected: tuple) -> None:
    p = parse_filename(name)
    assert (p.section, p.domain, p.split, p.label, p.index, p.attributes, p.kind, p.form) == expected


def test_parse_filename_ignores_directories_and_flac() -> None:
    p = parse_filename("/x/y/section_00_target_test_anomaly_0002_noAttribute.flac")
    assert (p.domain, p.label, p.index) == ("target", "anomaly", "0002")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


TRAIN = "section_00_source_train_normal_{:04d}_vel_6.wav"
TEST = "section_00_target_test_anomaly_{:04d}_vel_6.wav"


def _machine(root: Path, machine: str, n: int = 2) -> None:
    for i in range(n):
        _touch(root / machine / "train" / TRAIN.format(i))
        _touch(root / machine / "test" / TEST.format(i))
    _touch(root / machine / "supplemental" / "section_00_noise_0000_.wav")
    _touch(root / machine / "attributes_00.csv")


def test_discover_data_dev_layout(tmp_path: Path) -> None:
    _machine(tmp_path / "dev", "fan")
    _machine(tmp_path / "dev", "valve")
    clips = discover_clips([tmp_path / "dev"])
    assert len(clips) == 10
    assert [c.machine for c in clips] == ["fan"] * 5 + ["valve"] * 5
    assert [c.split for c in clips[:5]] == ["supplemental", "test", "test", "train", "train"]
    assert clips[0].kind == "noise"
    assert clips == discover_clips([tmp_path / "dev"])  # deterministic
    assert all(isinstance(c, Clip) for c in clips)


def test_discover_official_layout_dev_and_eval(tmp_path: Path) -> None:
    _machine(tmp_path / "dev_data" / "raw", "gearbox")
    _machine(tmp_path / "eval_data" / "raw", "AutoTrash")
    _touch(tmp_path / "eval_data" / "raw" / "AutoTrash" / "test" / "section_00_0000.wav")
    clips = discover_clips([tmp_path], splits={"test"})
    assert {c.machine for c in clips} == {"gearbox", "AutoTrash"}
    anon = [c for c in clips if c.name == "section_00_0000.wav"]
    assert len(anon) == 1 and anon[0].split == "test" and anon[0].label == "" and anon[0].domain == ""


def test_discover_machine_split_and_file_paths(tmp_path: Path) -> None:
    _machine(tmp_path, "fan")
    assert len(discover_clips([tmp_path / "fan"])) == 5
    train = discover_clips([tmp_path / "fan" / "train"])
    assert [c.split for c in train] == ["train", "train"] and {c.machine for c in train} == {"fan"}
    one = discover_clips([tmp_path / "fan" / "test" / TEST.format(1)])
    assert len(one) == 1 and one[0].machine == "fan" and one[0].label == "anomaly"
    # overlapping inputs give no duplicates
    assert len(discover_clips([tmp_path / "fan", tmp_path / "fan" / "train"])) == 5


def test_discover_splits_filter_and_folder_split_fallback(tmp_path: Path) -> None:
    _touch(tmp_path / "ToyCar" / "train" / "normal_id_00_00000000.wav")
    _touch(tmp_path / "ToyCar" / "test" / "anomaly_id_00_00000001.wav")
    clips = discover_clips([tmp_path], splits=["train"])
    assert [(c.name, c.split, c.label) for c in clips] == [("normal_id_00_00000000.wav", "train", "normal")]


def test_discover_loose_folder_and_unknown_names(tmp_path: Path) -> None:
    _touch(tmp_path / "clips" / "b.wav")
    _touch(tmp_path / "clips" / "a.WAV")
    _touch(tmp_path / "clips" / "._a.wav")  # macOS resource fork: skipped
    clips = discover_clips([tmp_path / "clips"])
    assert [c.name for c in clips] == ["a.WAV", "b.wav"]
    assert all(c.machine == "" and c.label == "" for c in clips)


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover_clips([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No audio clips found.*expected"):
        discover_clips([tmp_path / "empty"])
    _machine(tmp_path / "d", "fan")
    with pytest.raises(DataError, match="No supplemental"):
        discover_clips([tmp_path / "d" / "fan" / "train"], splits=["supplemental"])
    with pytest.raises(DataError, match="not a .wav"):
        discover_clips([tmp_path / "d" / "fan" / "attributes_00.csv"])
    with pytest.raises(ConfigError, match="Unknown split"):
        discover_clips([tmp_path / "d"], splits=["dev"])


def test_require_field_names_offending_files(tmp_path: Path) -> None:
    _machine(tmp_path, "fan")
    _touch(tmp_path / "fan" / "test" / "section_00_0007.wav")
    clips = discover_clips([tmp_path], splits=["test"])
    require_field([c for c in clips if c.label], "label", "report")
    with pytest.raises(DataError, match=r"report needs the label .* 1 clip\(s\).*section_00_0007\.wav"):
        require_field(clips, "label", "report")
    assert list(group_by_machine(clips)) == ["fan"]


def test_one_file_reached_through_two_given_paths_is_one_clip(tmp_path: Path) -> None:
    _machine(tmp_path / "dev", "fan")
    assert discover_clips([tmp_path / "dev", tmp_path / "dev" / "fan"]) == discover_clips([tmp_path / "dev"])


def test_a_link_to_another_clip_is_an_error_naming_both(tmp_path: Path) -> None:
    _machine(tmp_path / "dev", "fan")
    train = tmp_path / "dev" / "fan" / "train"
    test = tmp_path / "dev" / "fan" / "test" / TEST.format(7)
    os.link(train / TRAIN.format(0), test)  # a hard link: the same file under two names
    with pytest.raises(DataError, match="are the same file") as e:
        discover_clips([tmp_path / "dev"])
    assert str(test) in str(e.value) and str(train / TRAIN.format(0)) in str(e.value)


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_link_to_a_clip_outside_the_dataset_is_used(tmp_path: Path) -> None:
    _touch(tmp_path / "store" / "clip.wav")
    (tmp_path / "dev" / "fan" / "train").mkdir(parents=True)
    (tmp_path / "dev" / "fan" / "train" / TRAIN.format(0)).symlink_to(tmp_path / "store" / "clip.wav")
    assert [c.name for c in discover_clips([tmp_path / "dev"])] == [TRAIN.format(0)]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root (or non-POSIX) ignores folder permissions")
def test_an_unreadable_machine_folder_is_an_error(tmp_path: Path) -> None:
    _machine(tmp_path / "dev", "fan")
    _machine(tmp_path / "dev", "valve")
    (tmp_path / "dev" / "valve").chmod(0)
    try:
        with pytest.raises(DataError, match=f"Cannot list {tmp_path / 'dev' / 'valve'}"):
            discover_clips([tmp_path / "dev"])
    finally:
        (tmp_path / "dev" / "valve").chmod(0o755)
