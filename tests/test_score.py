"""Scoring, decisions, output formats, the submission folder and `asd score`."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tolerances import unit_dot_atol
from typer.testing import CliRunner

from asdcli.artifacts import Embeddings, save_embeddings
from asdcli.backend import bank as B
from asdcli.backend import bank_fit as F
from asdcli.backend import knn
from asdcli.backend import score as S
from asdcli.cli.main import app
from asdcli.errors import ArtifactMismatch, ConfigError, DataError
from asdcli.frontend.spec import FrontendSpec

runner = CliRunner()
SPEC = FrontendSpec(
    checkpoint_sha256="a" * 64,
    backbone_cfg_sha256="c" * 64,
    adapter_sha256="d" * 64,
    embedding="pooled",
    layers="last",
    pooling="mean",
    clip_seconds=10.0,
    channel=None,
    sample_rate=16000,
)
META = {"frontend": SPEC.to_dict()}


def meta_with(**changes: object) -> dict[str, object]:
    """META with some spec fields changed."""
    return {"frontend": {**SPEC.to_dict(), **changes}}


def make_embeddings(groups=(("fan", "00"), ("valve", "00")), n_train=20, n_test=8, dim=10, seed=0) -> Embeddings:
    """Normal clips near a 2-D plane through a per-machine centre; anomalies (test clips with
    index % 3 == 0) far off that plane."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list[str]] = {f: [] for f in Embeddings.FIELDS}
    vecs = []
    for g, (machine, section) in enumerate(groups):
        centre, plane = rng.standard_normal(dim) * 3, rng.standard_normal((2, dim))
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                domain = "target" if i % 4 == 3 else "source"
                label = "anomaly" if split == "test" and i % 3 == 0 else "normal"
                name = f"section_{section}_{domain}_{split}_{label}_{i:04d}_a_{g}.wav"
                for f, v in zip(Embeddings.FIELDS, (name, name, machine, section, domain, split, label)):
                    cols[f].append(v)
                off_plane = rng.standard_normal(dim) * (2.0 if label == "anomaly" else 0.05)
                vecs.append(centre + rng.standard_normal(2) @ plane + off_plane)
    return Embeddings(
        vectors=np.array(vecs, np.float32), meta=dict(META), **{f: np.array(v, dtype=str) for f, v in cols.items()}
    )


@pytest.fixture
def emb() -> Embeddings:
    return make_embeddings()


@pytest.fixture
def files(tmp_path: Path, emb: Embeddings) -> dict[str, Path]:
    """Embeddings file, a fan bank file and a bank folder."""
    paths = {"emb": tmp_path / "emb.npz", "bank": tmp_path / "fan.npz", "banks": tmp_path / "banks"}
    save_embeddings(paths["emb"], emb)
    B.save_bank(paths["bank"], F.fit_bank(emb, machine="fan"))
    B.save_banks(paths["banks"], F.fit_banks(emb))
    return paths


def test_scores_are_nearest_cosine_distance_in_standardized_space(emb: Embeddings) -> None:
    bank = F.fit_bank(emb, machine="fan")
    test = S.select_test(emb, "fan", "00")
    scores = S.score_embeddings(bank, test)
    z = (test.vectors - bank.mean) / bank.std
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    # two float32 paths (the test standardizes z itself, a few eps per element): twice the dot's bound
    np.testing.assert_allclose(scores, (1 - z @ bank.vectors.T).min(axis=1), atol=2 * unit_dot_atol(z.shape[1]))
    anomalous = test.label == "anomaly"
    assert scores[anomalous].min() > scores[~anomalous].max()
    assert S.score_vectors(bank, np.zeros((0, 10), np.float32)).shape == (0,)


def test_decisions_use_the_bank_threshold(emb: Embeddings) -> None:
    bank = replace(F.fit_bank(emb, machine="fan"), threshold=0.5)
    flags = S.decide(bank, np.array([0.1, 0.5, 0.50001, 2.0]))
    assert flags.tolist() == [0, 0, 1, 1]


def test_mismatched_embeddings_are_refused(emb: Embeddings) -> None:
    bank = F.fit_bank(emb, machine="fan")
    other_dim = Embeddings(
        vectors=np.zeros((len(emb), 4), np.float32), meta=emb.meta, **{f: getattr(emb, f) for f in Embeddings.FIELDS}
    )
    with pytest.raises(ArtifactMismatch, match="dimension 10 but the embeddings has 4"):
        S.score_embeddings(bank, other_dim)
    other_ckpt = replace(emb, meta=meta_with(checkpoint_sha256="b" * 64))
    with pytest.raises(ArtifactMismatch, match="checkpoint_sha256"):
        S.score_embeddings(bank, other_ckpt)
    with pytest.raises(ArtifactMismatch, match="adapter_sha256"):
        S.score_embeddings(bank, replace(emb, meta=meta_with(adapter_sha256="e" * 64)))
    with pytest.raises(ArtifactMismatch):
        S.score_vectors(bank, np.zeros((3, 4), np.float32))


def test_formats() -> None:
    names, scores = ["a.wav", "b.wav"], np.array([0.1, 0.123456789], np.float32)
    assert S.format_rows(names, scores) == "a.wav,0.100000001\nb.wav,0.123456791\n"
    assert S.format_rows(names, scores, header=True).startswith("filename,score\na.wav,")
    lines = S.format_rows(names, scores, np.array([0, 1]), fmt="jsonl").splitlines()
    assert json.loads(lines[1]) == {"filename": "b.wav", "score": 0.123456791, "decision": 1}
    assert S.format_decisions(names, np.array([1, 0])) == "a.wav,1\nb.wav,0\n"
    # %.9g round-trips float32 exactly.
    x = np.random.default_rng(0).random(1000).astype(np.float32)
    assert np.array_equal(np.array([S.format_score(v) for v in x], dtype=np.float32), x)
    with pytest.raises(ConfigError):
        S.format_rows(names, scores, fmt="xml")


def _read(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_write_submission_folder(tmp_path: Path, emb: Embeddings) -> None:
    banks = F.fit_banks(emb)
    out = tmp_path / "sub"
    paths = S.write_submission(banks, emb, out)
    expected = sorted(
        f"{kind}_{m}_section_00_test.csv" for kind in ("anomaly_score", "decision_result") for m in ("fan", "valve")
    )
    assert sorted(p.name for p in out.iterdir()) == expected == [p.name for p in paths]
    test = S.select_test(emb, "fan", "00")
    rows = _read(out / "anomaly_score_fan_section_00_test.csv")
    assert [r[0] for r in rows] == list(test.filenames)
    np.testing.assert_allclose([float(r[1]) for r in rows], S.score_embeddings(banks[("fan", "00")], test), rtol=1e-7)
    decisions = _read(out / "decision_result_fan_section_00_test.csv")
    assert [r[0] for r in decisions] == list(test.filenames) and {r[1] for r in decisions} <= {"0", "1"}
    assert (out / "anomaly_score_fan_section_00_test.csv").read_bytes().endswith(b"\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no temp folders left


def test_write_submission_replaces_stale_files_and_refuses_foreign_ones(tmp_path: Path, emb: Embeddings) -> None:
    banks = F.fit_banks(emb)
    out = tmp_path / "sub"
    out.mkdir()
    (out / "anomaly_score_pump_section_00_test.csv").write_text("old\n")
    S.write_submission(banks, emb, out)
    assert not (out / "anomaly_score_pump_section_00_test.csv").exists() and len(list(out.iterdir())) == 4
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files \\(notes.txt\\)"):
        S.write_submission(banks, emb, out)
    assert (out / "notes.txt").exists() and len(list(out.iterdir())) == 5  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        S.write_submission(banks, emb, tmp_path / "file")


def test_write_submission_checks_everything_first(tmp_path: Path, emb: Embeddings) -> None:
    banks = F.fit_banks(emb)
    out = tmp_path / "sub"
    with pytest.raises(DataError, match="No bank for valve section 00 \\(banks: fan section 00\\)"):
        S.write_submission([banks[("fan", "00")]], emb, out)
    doubled = Embeddings(
        vectors=np.concatenate([emb.vectors, emb.vectors[-1:]]),
        meta=emb.meta,
        **{f: np.concatenate([getattr(emb, f), getattr(emb, f)[-1:]]) for f in Embeddings.FIELDS},
    )
    with pytest.raises(DataError, match="the same clip twice named"):
        S.write_submission(banks, doubled, out)
    with pytest.raises(DataError, match="no test clips"):
        S.write_submission(banks, emb.select(emb.split == "train"), out)
    with pytest.raises(ArtifactMismatch):
        S.write_submission(banks, replace(emb, meta=meta_with(checkpoint_sha256="c" * 64)), out)
    assert not out.exists()
    # A bank without test clips is simply not part of the submission.
    only_fan = emb.select(emb.machine == "fan")
    assert len(S.write_submission(banks, only_fan, out)) == 2


def test_cli_score_embeddings_to_stdout(files: dict[str, Path], emb: Embeddings, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "score",
            "--bank",
            str(files["bank"]),
            "--embeddings",
            str(files["emb"]),
            "--decisions",
            str(tmp_path / "dec.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    test = S.select_test(emb, "fan", "00")
    rows = [line.split(",") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == list(test.filenames) and len(rows[0]) == 2
    bank = B.load_bank(files["bank"])
    expected = S.score_embeddings(bank, test)
    np.testing.assert_allclose([float(row[1]) for row in rows], expected, rtol=1e-7)
    dec = _read(tmp_path / "dec.csv")
    assert [int(d[1]) for d in dec] == S.decide(bank, expected).tolist()
    r = runner.invoke(app, ["score", "-b", str(files["bank"]), "-e", str(files["emb"]), "--all", "--header"])
    assert (
        r.exit_code == 0 and r.stdout.splitlines()[0] == "filename,score" and len(r.stdout.splitlines()) == len(emb) + 1
    )
    r = runner.invoke(app, ["score", "-b", str(files["bank"]), "-e", str(files["emb"]), "--format", "jsonl"])
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and set(recs[0]) == {"filename", "score", "decision"} and len(recs) == len(test)


def test_cli_submission(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "submission"
    r = runner.invoke(
        app, ["score", "--banks", str(files["banks"]), "--embeddings", str(files["emb"]), "--submission-dir", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert len(list(out.iterdir())) == 4 and "Wrote 4 files" in r.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["--embeddings", "EMB"], "exactly one of --bank"),
        (["--bank", "BANK", "--banks", "BANKS", "--embeddings", "EMB"], "exactly one of --bank"),
        (["--banks", "BANKS", "--embeddings", "EMB"], "--banks needs"),
        (
            ["--banks", "BANKS", "--embeddings", "EMB", "--submission-dir", "OUT", "--decisions", "OUT"],
            "--decisions is for --bank",
        ),
        (["--bank", "BANK", "--embeddings", "EMB", "--submission-dir", "OUT"], "--submission-dir needs --banks"),
        (["--bank", "BANK"], "either clips"),
        (["--bank", "BANK", "--embeddings", "NOPE"], "does not exist"),
        (["--bank", "BANK2", "--embeddings", "EMB"], "no test clips of pump section 00"),
        (["--bank", "BANK3", "--embeddings", "EMB"], "different front ends (checkpoint_sha256"),
    ],
)
def test_cli_score_errors(files: dict[str, Path], tmp_path: Path, args: list[str], match: str) -> None:
    pump = make_embeddings(groups=(("pump", "00"),))
    B.save_bank(tmp_path / "pump.npz", F.fit_bank(pump))
    B.save_bank(
        tmp_path / "other.npz",
        F.fit_bank(replace(make_embeddings(), meta=meta_with(checkpoint_sha256="f" * 64)), machine="fan"),
    )
    subst = {
        "EMB": files["emb"],
        "BANK": files["bank"],
        "BANKS": files["banks"],
        "OUT": tmp_path / "o",
        "NOPE": tmp_path / "nope.npz",
        "BANK2": tmp_path / "pump.npz",
        "BANK3": tmp_path / "other.npz",
    }
    r = runner.invoke(app, ["score", *[str(subst.get(a, a)) for a in args]])
    assert r.exit_code == 1, r.output
    assert "Error:" in r.output and match in r.output and "Traceback" not in r.output


def test_domain_density_bank_scores(emb: Embeddings) -> None:
    cfg = B.BankConfig(k=2, score_norm="domain-density", density_k=3, condense_source=6)
    bank = F.fit_bank(emb, cfg, machine="fan")
    test = S.select_test(emb, "fan", "00")
    q = knn.prepare(test.vectors, bank.mean, bank.std)
    src, tgt = bank.domain == "source", bank.domain == "target"
    dist = np.clip(1 - q.astype(np.float64) @ bank.vectors.T.astype(np.float64), 0, None) / bank.radii
    expected = np.minimum(np.sort(dist[:, src], axis=1)[:, :2].mean(1), np.sort(dist[:, tgt], axis=1)[:, :2].mean(1))
    np.testing.assert_allclose(S.score_embeddings(bank, test), expected, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random BEATs checkpoint (and a second one), 0.5 s fan clips, and a bank fitted on
    the train clips embedded with the first checkpoint."""
    import soundfile as sf

    pytest.importorskip("asdcli.frontend.embed")  # the front end may land after the back end
    from asdcli.data.dataset import discover_clips
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig

    root = tmp_path_factory.mktemp("onthefly")
    paths = {"data": root / "fan"}
    for seed in (1, 2):
        paths[f"ckpt{seed}"] = make_tiny_checkpoint(root / f"tiny{seed}.pt", seed)
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    for split, label, n in (("train", "normal", 3), ("test", "normal", 1), ("test", "anomaly", 1)):
        (paths["data"] / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            wave = 0.3 * np.sin(2 * np.pi * (300 + 50 * i + (400 if label == "anomaly" else 0)) * t)
            wave += 0.05 * rng.standard_normal(t.size)
            sf.write(
                paths["data"] / split / f"section_00_source_{split}_{label}_{i:04d}_a_1.wav",
                wave.astype(np.float32),
                16000,
            )
    train = embed_clips(
        discover_clips([paths["data"]], splits={"train"}),
        EmbedConfig(checkpoint=paths["ckpt1"], device="cpu", seconds=0.5),
    )
    paths["bank"] = root / "bank.npz"
    B.save_bank(paths["bank"], F.fit_bank(train))
    return paths


def test_cli_score_embeds_clips_with_the_banks_checkpoint(tiny_setup: dict[str, Path]) -> None:
    from asdcli.data.dataset import discover_clips
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig

    r = runner.invoke(app, ["score", "--bank", str(tiny_setup["bank"]), str(tiny_setup["data"]), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = [line.split(",") for line in r.stdout.splitlines()]
    test = embed_clips(
        discover_clips([tiny_setup["data"]], splits={"test"}),
        EmbedConfig(checkpoint=tiny_setup["ckpt1"], device="cpu", seconds=0.5),
    )
    assert [row[0] for row in rows] == list(test.filenames)  # a folder contributes its test clips only
    expected = S.score_embeddings(B.load_bank(tiny_setup["bank"]), test)
    np.testing.assert_allclose([float(row[1]) for row in rows], expected, rtol=1e-5, atol=1e-6)
    one = tiny_setup["data"] / "train" / "section_00_source_train_normal_0000_a_1.wav"
    r = runner.invoke(app, ["score", "--bank", str(tiny_setup["bank"]), str(one), "--device", "cpu"])
    assert r.exit_code == 0 and r.stdout.startswith(one.name + ",")  # explicit files are always scored


def test_cli_score_with_another_checkpoint_is_a_mismatch(tiny_setup: dict[str, Path]) -> None:
    r = runner.invoke(
        app,
        [
            "score",
            "--bank",
            str(tiny_setup["bank"]),
            str(tiny_setup["data"]),
            "--checkpoint",
            str(tiny_setup["ckpt2"]),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 1 and "different front ends (checkpoint_sha256" in r.output and "Traceback" not in r.output
    assert r.stdout.count(",") == 0  # no scores were printed
