"""asd package: the DCASE Task 2 submission layout, meta YAML, completeness checks and zip."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from asdcli.cli.main import app
from asdcli.evaluate.system_meta import transformer_macs

runner = CliRunner()
MACHINES = ("fan", "valve")


def _eval_data(root: Path) -> dict[str, list[str]]:
    """Anonymised evaluation-style test names, as the eval set has them."""
    names = {}
    for m in MACHINES:
        folder = root / m / "test"
        folder.mkdir(parents=True)
        names[m] = [f"section_00_{i:04d}.wav" for i in range(6)]
        for n in names[m]:
            (folder / n).touch()
    return names


def _submission(folder: Path, names: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for m, clips in names.items():
        scores = rng.random(len(clips))
        (folder / f"anomaly_score_{m}_section_00_test.csv").write_text(
            "".join(f"{n},{s}\n" for n, s in zip(clips, scores))
        )
        (folder / f"decision_result_{m}_section_00_test.csv").write_text(
            "".join(f"{n},{int(s > 0.5)}\n" for n, s in zip(clips, scores))
        )
    return folder


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    names = _eval_data(tmp_path / "eval")
    return tmp_path / "eval", _submission(tmp_path / "sub", names)


def _package(data: Path, sub: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app,
        ["package", str(sub), "--team", "Doe_ACME", "--system", "2", "--out", str(out), "--data", str(data), *extra],
    )


def test_package_layout_meta_and_zip(setup, tmp_path: Path) -> None:
    data, sub = setup
    res = _package(data, sub, tmp_path / "pkg")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "pkg" / "Doe_ACME_task2_2.zip")
    with zipfile.ZipFile(tmp_path / "pkg" / "Doe_ACME_task2_2.zip") as archive:
        listed = sorted(archive.namelist())
        meta = yaml.safe_load(archive.read("task2/Doe_ACME_task2_2/Doe_ACME_task2_2.meta.yaml"))
        assert (
            archive.read("task2/Doe_ACME_task2_2/anomaly_score_fan_section_00_test.csv")
            == (sub / "anomaly_score_fan_section_00_test.csv").read_bytes()
        )
    assert listed == sorted(
        ["task2/Doe_ACME_task2_2/Doe_ACME_task2_2.meta.yaml"]
        + [
            f"task2/Doe_ACME_task2_2/{kind}_{m}_section_00_test.csv"
            for kind in ("anomaly_score", "decision_result")
            for m in MACHINES
        ]
    )
    assert meta["submission"]["label"] == "Doe_ACME_task2_2"
    assert meta["submission"]["authors"][0]["lastname"] == "Doe"
    assert meta["submission"]["authors"][0]["affiliation"]["abbreviation"] == "ACME"
    assert meta["system"]["description"]["input_sampling_rate"] == "16kHz"
    assert (tmp_path / "pkg/task2/Doe_ACME_task2_2/decision_result_valve_section_00_test.csv").is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda sub: (sub / "decision_result_valve_section_00_test.csv").unlink(), "is missing"),
        (lambda sub: _drop_first_row(sub / "anomaly_score_fan_section_00_test.csv"), "1 test clips without a row"),
        (lambda sub: _set_first(sub / "anomaly_score_fan_section_00_test.csv", "nan"), "not a finite number"),
        (lambda sub: _set_first(sub / "decision_result_fan_section_00_test.csv", "0.7"), "a decision must be 0 or 1"),
    ],
)
def test_incomplete_submissions_are_refused(setup, tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    data, sub = setup
    damage(sub)
    res = _package(data, sub, tmp_path / "pkg")
    assert res.exit_code == 1 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "pkg").exists()  # nothing written before the checks pass


def _drop_first_row(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))


def _set_first(path: Path, value: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].split(",")[0] + f",{value}\n"
    path.write_text("".join(lines))


def test_macs_of_beats_iter3_on_a_10s_clip() -> None:
    # 1000 frames -> 62 x 8 = 496 tokens; patch conv 496*256*512, projection 496*512*768,
    # per layer 496*(4*768^2 + 2*768*3072) + 2*496^2*768, 12 layers
    tokens = 496
    expected = (
        tokens * 256 * 512 + tokens * 512 * 768 + 12 * (tokens * (4 * 768**2 + 2 * 768 * 3072) + 2 * tokens**2 * 768)
    )
    assert transformer_macs({}, 10.0) == expected
    assert 40e9 < expected < 50e9


def test_files_of_other_machines_are_left_out_and_said(setup, tmp_path: Path) -> None:
    data, sub = setup  # e.g. the dev machines of a run over dev_data + eval_data
    (sub / "anomaly_score_pump_section_00_test.csv").write_text("section_00_source_test_normal_0000.wav,1\n")
    res = _package(data, sub, tmp_path / "pkg")
    assert res.exit_code == 0, res.output
    assert "Left out 1 file(s)" in res.stderr and "anomaly_score_pump_section_00_test.csv" in res.stderr
    with zipfile.ZipFile(tmp_path / "pkg" / "Doe_ACME_task2_2.zip") as archive:
        assert not any("pump" in n for n in archive.namelist())


def test_repackaging_removes_its_own_earlier_files_only(setup, tmp_path: Path) -> None:
    """A second package for fewer machines removes the first one's files of the other machine, so
    the folder holds what the zip holds; a file asdcli did not write (or an edited meta YAML) is
    never removed or overwritten: the command refuses and names it."""
    data, sub = setup
    out = tmp_path / "pkg"
    assert _package(data, sub, out).exit_code == 0
    folder = out / "task2" / "Doe_ACME_task2_2"
    fan_only = tmp_path / "eval_fan"
    (fan_only / "fan").mkdir(parents=True)
    (data / "fan").rename(fan_only / "fan")
    res = _package(fan_only, sub, out)
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(out / "Doe_ACME_task2_2.zip") as archive:
        zipped = {Path(n).name for n in archive.namelist()}
    assert {p.name for p in folder.iterdir()} == zipped and not any("valve" in n for n in zipped)

    mine = folder / "notes.txt"
    mine.write_text("my notes")
    meta = folder / "Doe_ACME_task2_2.meta.yaml"
    for victim in (mine, meta):
        if victim is meta:
            mine.unlink()
            meta.write_text(meta.read_text().replace('name: "FILL IN"', 'name: "My system"', 1))
        before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
        res = _package(fan_only, sub, out)
        assert res.exit_code == 1 and victim.name in res.output and str(folder) in " ".join(res.output.split())
        assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before


def test_a_zip_asd_package_did_not_write_is_never_replaced(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Only a zip that `asd package` wrote, unchanged since, is replaced: a user's zip of that name,
    ours with the report added, or a hand-made re-zip of the folder (which would vouch for an edited
    meta YAML) is refused, naming the zip, and nothing is written."""
    data, sub = setup
    out = tmp_path / "pkg"
    archive, folder = out / "Doe_ACME_task2_2.zip", out / "task2" / "Doe_ACME_task2_2"
    out.mkdir()
    archive.write_bytes(b"the user's own archive")
    res = _package(data, sub, out)
    assert res.exit_code == 1 and str(archive) in " ".join(res.stderr.split()) and "another --out" in res.stderr
    assert archive.read_bytes() == b"the user's own archive" and not (out / "task2").exists()

    archive.unlink()
    assert _package(data, sub, out).exit_code == 0
    assert _package(data, sub, out).exit_code == 0  # its own zip: replaced
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("task2/Doe_ACME_task2.technical_report.pdf", b"%PDF report")
    before = archive.read_bytes()
    res = _package(data, sub, out)
    assert res.exit_code == 1 and str(archive) in " ".join(res.stderr.split())
    assert archive.read_bytes() == before

    meta = folder / "Doe_ACME_task2_2.meta.yaml"
    meta.write_text(meta.read_text().replace('name: "FILL IN"', 'name: "My system"', 1))
    with zipfile.ZipFile(archive, "w") as z:  # re-zipped by hand: CRCs of the edited meta YAML, no marker
        for path in sorted(folder.iterdir()):
            z.write(path, path.relative_to(out).as_posix())
    before = sorted((p.name, p.read_bytes()) for p in (*folder.iterdir(), archive))
    res = _package(data, sub, out)
    assert res.exit_code == 1 and str(archive) in " ".join(res.stderr.split())
    assert sorted((p.name, p.read_bytes()) for p in (*folder.iterdir(), archive)) == before


def test_meta_is_filled_from_the_run_folder(setup, tmp_path: Path) -> None:
    import json

    from asdcli.backend.bank import save_bank
    from asdcli.backend.bank_fit import build_bank
    from asdcli.evaluate.package import PackageConfig
    from asdcli.evaluate.system_meta import backbone_parameters, system_meta
    from asdcli.frontend.beats.config import tiny_beats_config

    _, sub = setup
    run = sub.parent
    (run / "banks").mkdir()
    (run / "finetune").mkdir()
    cfg = tiny_beats_config()
    bank = build_bank(
        np.random.default_rng(0).normal(size=(6, 4)),
        np.array(["source"] * 6),
        np.array([f"t{i}.wav" for i in range(6)]),
        machine="fan",
        section="00",
        embedding_meta={"backbone_cfg": cfg, "frontend": {"clip_seconds": 2.0}, "checkpoint_path": "/x/tiny.pt"},
    )
    save_bank(run / "banks" / "bank_fan_section_00.npz", bank)
    (run / "finetune" / "run.json").write_text(
        json.dumps(
            {
                "config": {"labels": "machine", "specaugment": True, "mixup": 0.4, "noise_mix": False},
                "model": {"trainable_parameters": 1234},
            }
        )
    )
    meta = yaml.safe_load(system_meta(PackageConfig(source=run, team="Doe_ACME", system=1, out=tmp_path), run))
    description, complexity = meta["system"]["description"], meta["system"]["complexity"]
    assert "LoRA" in description["machine_learning_method"] and "k=1" in description["machine_learning_method"]
    assert description["data_augmentation"] == "SpecAugment, mixup"
    assert description["pretrained_model"].startswith("BEATs, checkpoint tiny.pt")
    from asdcli.frontend.beats.backbone import BEATs
    from asdcli.frontend.beats.config import BeatsConfig

    backbone = sum(p.numel() for p in BEATs(BeatsConfig.from_dict(cfg)).parameters())  # built for real
    assert backbone_parameters(cfg) == backbone
    assert complexity == {
        "total_parameters": backbone + 1234,
        "trainable_parameters": 1234,
        "MACS": transformer_macs(cfg, 2.0),
    }


def test_decisions_are_packed_as_0_or_1(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, sub = setup
    path = sub / "decision_result_fan_section_00_test.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("".join(f"{n},{'+1' if d == '1' else '0.0'}\n" for n, d in rows))  # read as 1 and 0
    res = _package(data, sub, tmp_path / "pkg")
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(tmp_path / "pkg" / "Doe_ACME_task2_2.zip") as archive:
        packed = archive.read("task2/Doe_ACME_task2_2/decision_result_fan_section_00_test.csv").decode()
    assert packed == "".join(f"{n},{d}\n" for n, d in rows)
