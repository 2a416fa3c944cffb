"""Banks: fitting per machine/section, every option, the threshold, file format, `asd fit-bank`."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from tolerances import unit_dot_atol
from typer.testing import CliRunner

from asdcli.artifacts import Embeddings, save_embeddings
from asdcli.backend import bank as B
from asdcli.backend import bank_fit as F
from asdcli.backend import knn
from asdcli.cli.main import app
from asdcli.errors import ArtifactError, ArtifactNotFound, ConfigError, DataError

runner = CliRunner()
META = {"checkpoint_sha256": "a" * 64, "adapter_id": "run-1", "embedding": "pooled"}


def make_embeddings(
    groups=(("fan", "00"), ("valve", "00")), n_train=24, n_target=4, n_test=6, dim=12, seed=0
) -> Embeddings:
    """Random vectors with DCASE fields: per machine/section n_train train clips (the last
    n_target of them target domain) and n_test test clips."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list[str]] = {f: [] for f in Embeddings.FIELDS}
    for machine, section in groups:
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                domain = (
                    "target" if (split == "train" and i >= n - n_target) or (split == "test" and i % 2) else "source"
                )
                label = "anomaly" if split == "test" and i % 3 == 0 else "normal"
                name = f"section_{section}_{domain}_{split}_{label}_{i:04d}_a_{i}.wav"
                for f, v in zip(
                    Embeddings.FIELDS, (name, f"/d/{machine}/{split}/{name}", machine, section, domain, split, label)
                ):
                    cols[f].append(v)
    n = len(cols["filenames"])
    vecs = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.5, 3, dim).astype(np.float32) + 2.0
    return Embeddings(vectors=vecs, meta=dict(META), **{f: np.array(v, dtype=str) for f, v in cols.items()})


def train_rows(emb: Embeddings, machine: str = "fan") -> Embeddings:
    return emb.select((emb.split == "train") & (emb.machine == machine))


def test_default_bank_is_standardized_normalized_train_vectors() -> None:
    emb = make_embeddings()
    bank = F.fit_bank(emb, machine="fan")
    rows = train_rows(emb)
    np.testing.assert_allclose(bank.mean, rows.vectors.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bank.std, rows.vectors.std(axis=0), rtol=1e-5)
    z = (rows.vectors - rows.vectors.mean(0)) / rows.vectors.std(0)
    np.testing.assert_allclose(bank.vectors, z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)
    assert bank.vectors.dtype == np.float32 and bank.vectors.shape == (24, 12)
    assert list(bank.filenames) == list(rows.filenames) and list(bank.domain) == list(rows.domain)
    np.testing.assert_array_equal(bank.radii, 1.0)
    assert (bank.machine, bank.section, bank.embedding_meta) == ("fan", "00", META)


def test_threshold_is_gamma_quantile_of_leave_one_out_scores() -> None:
    bank = F.fit_bank(make_embeddings(), machine="fan")
    v = bank.vectors.astype(np.float64)
    d = 1 - v @ v.T
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(bank.loo_scores, d.min(axis=1), atol=1e-6)
    params = stats.gamma.fit(bank.loo_scores.astype(np.float64))
    assert bank.threshold == pytest.approx(stats.gamma.ppf(0.9, *params), rel=1e-6)
    assert bank.threshold_info["method"] == "gamma"
    higher = F.fit_bank(make_embeddings(), B.BankConfig(threshold_quantile=0.99), machine="fan")
    assert higher.threshold > bank.threshold


def test_threshold_fallbacks() -> None:
    assert F.fit_threshold(np.full(10, 0.25)) == (0.25, {"quantile": 0.9, "n_scores": 10, "method": "max"})
    assert F.fit_threshold(np.array([0.1, 0.3]))[0] == 0.3
    assert F.fit_threshold(np.array([0.1, np.inf, 0.2, 0.3]))[1]["n_scores"] == 3
    with pytest.raises(DataError):
        F.fit_threshold(np.array([np.inf]))


def test_threshold_falls_back_to_empirical_quantile_when_gamma_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("no convergence")

    monkeypatch.setattr(stats.gamma, "fit", broken)
    scores = np.linspace(0.1, 1.0, 11)
    thr, info = F.fit_threshold(scores, 0.9)
    assert info["method"] == "empirical" and thr == pytest.approx(np.quantile(scores, 0.9))


def test_k_option_means_k_smallest_distances() -> None:
    bank = F.fit_bank(make_embeddings(), B.BankConfig(k=3), machine="fan")
    v = bank.vectors.astype(np.float64)
    d = 1 - v @ v.T
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(bank.loo_scores, np.sort(d, axis=1)[:, :3].mean(axis=1), atol=1e-6)


def test_condense_source_keeps_every_target_vector() -> None:
    emb = make_embeddings(n_train=40, n_target=5)
    cfg = B.BankConfig(condense_source=6, seed=1)
    bank = F.fit_bank(emb, cfg, machine="fan")
    rows = train_rows(emb)
    tgt = rows.domain == "target"
    assert len(bank) == 6 + 5
    assert list(bank.filenames[bank.domain == "target"]) == list(rows.filenames[tgt])
    np.testing.assert_allclose(
        bank.vectors[bank.domain == "target"], knn.prepare(rows.vectors, bank.mean, bank.std)[tgt], atol=1e-6
    )
    assert all(f.startswith("kmeans_centre_") for f in bank.filenames[bank.domain == "source"])
    np.testing.assert_array_equal(F.fit_bank(emb, cfg, machine="fan").vectors, bank.vectors)  # seeded
    assert not np.array_equal(
        F.fit_bank(emb, B.BankConfig(condense_source=6, seed=2), machine="fan").vectors, bank.vectors
    )
    # More centres than source vectors: nothing to condense.
    assert len(F.fit_bank(emb, B.BankConfig(condense_source=1000), machine="fan")) == 40


def test_score_norms_are_applied_with_the_groups_they_define() -> None:
    emb = make_embeddings()
    q = knn.prepare(train_rows(emb, "valve").vectors, *knn.standardization_stats(train_rows(emb).vectors))
    dd = F.fit_bank(emb, B.BankConfig(score_norm="domain-density", density_k=3, density_k_target=2), machine="fan")
    src, tgt = dd.domain == "source", dd.domain == "target"
    np.testing.assert_allclose(dd.radii[src], knn.density_radii(dd.vectors[src], 3))
    np.testing.assert_allclose(dd.radii[tgt], knn.density_radii(dd.vectors[tgt], 2))
    assert dd.normalization == {"density_k": 3, "density_k_target": 2}
    d = lambda rows, scale: (np.clip(1 - q.astype(np.float64) @ dd.vectors[rows].T, 0, None) / scale).min(axis=1)  # noqa: E731
    # float32 against float64: the dot's rounding bound for unit 12-d vectors, divided by the radius
    tol = unit_dot_atol(12) / float(min(dd.radii.min(), 1.0))
    np.testing.assert_allclose(dd.score_prepared(q), np.minimum(d(src, dd.radii[src]), d(tgt, dd.radii[tgt])), atol=tol)
    plain = F.fit_bank(emb, B.BankConfig(score_norm="density", density_k=3), machine="fan")
    np.testing.assert_allclose(plain.radii, knn.density_radii(plain.vectors, 3))
    tol = unit_dot_atol(12) / float(min(plain.radii.min(), 1.0))
    np.testing.assert_allclose(plain.score_prepared(q), d(np.arange(24), plain.radii), atol=tol)


@pytest.mark.parametrize(
    "cfg, n_train, error, match",
    [
        (B.BankConfig(k=30), 24, ConfigError, "--k 30 needs at least 30"),
        (B.BankConfig(score_norm="density", density_k=24), 24, ConfigError, "--density-k 24 needs at least 25"),
        (B.BankConfig(score_norm="domain-density"), 24, ConfigError, "needs at least 2 source and 2 target"),
        (B.BankConfig(score_norm="domain-zscore"), 24, ConfigError, "needs at least 2 source and 2 target"),
        (B.BankConfig(), 1, DataError, "at least 2 train clips"),
    ],
)
def test_too_small_banks_are_clear_errors(cfg: B.BankConfig, n_train: int, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        F.fit_bank(make_embeddings(n_train=n_train, n_target=0), cfg, machine="fan")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 2.5},
        {"k": True},
        {"condense_source": 0},
        {"score_norm": "density", "density_k": 0},
        {"score_norm": "zscore"},
        {"density_k": 3},
        {"score_norm": "density", "density_k_target": 2},
        {"threshold_quantile": 1.0},
        {"threshold_quantile": float("nan")},
        {"seed": -1},
    ],
)
def test_invalid_options(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        B.BankConfig(**kwargs)


def test_nan_embeddings_are_refused() -> None:
    emb = make_embeddings(groups=(("fan", "00"),))
    emb.vectors[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        F.fit_bank(emb)


def test_choosing_machine_and_section() -> None:
    emb = make_embeddings(groups=(("fan", "00"), ("fan", "01"), ("valve", "00")))
    with pytest.raises(ConfigError, match="fan section 00, fan section 01, valve section 00"):
        F.fit_bank(emb, what="x.npz")
    with pytest.raises(ConfigError, match="fan section 00, fan section 01"):
        F.fit_bank(emb, machine="fan")
    assert F.fit_bank(emb, machine="fan", section="01").section == "01"
    assert F.fit_bank(emb, machine="valve").machine == "valve"
    with pytest.raises(DataError, match="no train clips of machine pump.*it holds fan section 00"):
        F.fit_bank(emb, machine="pump")
    banks = F.fit_banks(emb)
    assert sorted(banks) == [("fan", "00"), ("fan", "01"), ("valve", "00")]
    assert all(len(b) == 24 for b in banks.values())  # test clips never enter a bank
    assert sorted(F.fit_banks(emb, machine="fan")) == [("fan", "00"), ("fan", "01")]
    test_only = emb.select(emb.split == "test")
    with pytest.raises(DataError, match="no train clips \\(splits found: test\\)"):
        F.fit_banks(test_only)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = B.BankConfig(k=2, score_norm="domain-density", density_k=2, condense_source=5, threshold_quantile=0.8, seed=4)
    bank = F.fit_bank(make_embeddings(), cfg, machine="fan")
    path = tmp_path / "b.npz"
    B.save_bank(path, bank)
    loaded = B.load_bank(path)
    for f in ("mean", "std", "vectors", "domain", "filenames", "radii", "loo_rows", "loo_scores"):
        np.testing.assert_array_equal(getattr(loaded, f), getattr(bank, f))
    assert loaded.config == cfg and loaded.threshold == bank.threshold
    assert loaded.embedding_meta == META and loaded.threshold_info == bank.threshold_info
    assert loaded.normalization == bank.normalization and loaded.loo_stats == bank.loo_stats
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert z["vectors"].dtype == np.float32
    assert meta["schema_version"] == B.BANK_SCHEMA and meta["config"]["condense_source"] == 5
    assert meta["embedding"]["checkpoint_sha256"] == "a" * 64 and meta["domains"] == {"source": 5, "target": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]  # no temp file left


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        B.load_bank(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError):
        B.load_bank(tmp_path / "junk.npz")
    emb_path = tmp_path / "emb.npz"
    save_embeddings(emb_path, make_embeddings())
    with pytest.raises(ArtifactError, match="lacks"):
        B.load_bank(emb_path)
    bank = F.fit_bank(make_embeddings(), machine="fan")
    good = tmp_path / "good.npz"
    B.save_bank(good, bank)
    with np.load(good) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    for change, match in (({"schema_version": 99}, "schema 99"), ({"kind": "other"}, "not a bank")):
        arrays["meta"] = np.asarray(json.dumps({**meta, **change}))
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ArtifactError, match=match):
            B.load_bank(tmp_path / "bad.npz")


def test_load_banks_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        B.load_banks(tmp_path / "nope")
    with pytest.raises(ArtifactNotFound, match="no bank_"):
        B.load_banks(tmp_path)
    banks = F.fit_banks(make_embeddings())
    paths = B.save_banks(tmp_path, banks)
    assert [p.name for p in paths] == ["bank_fan_section_00.npz", "bank_valve_section_00.npz"]
    assert sorted(B.load_banks(tmp_path)) == [("fan", "00"), ("valve", "00")]
    B.save_bank(tmp_path / "bank_copy.npz", banks[("fan", "00")])
    with pytest.raises(ArtifactError, match="two banks for fan section 00"):
        B.load_banks(tmp_path)


def test_cli_fit_bank_out_and_out_dir(tmp_path: Path) -> None:
    emb_path = tmp_path / "train.npz"
    save_embeddings(emb_path, make_embeddings())
    r = runner.invoke(app, ["fit-bank", str(emb_path), "--out", str(tmp_path / "b.npz")])
    assert r.exit_code == 1 and "several machines" in r.output and "valve section 00" in r.output
    r = runner.invoke(
        app,
        [
            "fit-bank",
            str(emb_path),
            "--machine",
            "fan",
            "--section",
            "00",
            "--out",
            str(tmp_path / "b.npz"),
            "--k",
            "2",
            "--score-norm",
            "domain-density",
            "--condense-source",
            "5",
            "--density-k",
            "2",
            "--threshold-quantile",
            "0.95",
            "--seed",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    bank = B.load_bank(tmp_path / "b.npz")
    assert bank.config == B.BankConfig(2, "domain-density", 2, None, 5, 0.95, 3) and len(bank) == 9
    assert "fan section 00: 9 vectors" in r.output
    r = runner.invoke(app, ["fit-bank", str(emb_path), "--out-dir", str(tmp_path / "banks")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "banks").iterdir()) == [
        "bank_fan_section_00.npz",
        "bank_valve_section_00.npz",
    ]


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "exactly one of --out"),
        (["--out", "TMP/a.npz", "--out-dir", "TMP/d"], "exactly one of --out"),
        (["--out-dir", "TMP/d", "--machine", "pump"], "no train clips of machine pump"),
        (["--out-dir", "TMP/d", "--threshold-quantile", "1.5"], "threshold-quantile"),
        (["--out-dir", "TMP/d", "--k", "99"], "--k 99 needs"),
        (["--out-dir", "TMP/d", "--score-norm", "lof"], "--score-norm must be one of"),
        (["--out-dir", "TMP/d", "--density-k", "3"], "--density-k needs --score-norm density"),
        (["--out-dir", "TMP/d", "--domain-aware"], "--domain-aware was removed"),
        (["--out-dir", "TMP/d", "--density-norm", "5"], "use --score-norm density --density-k 5"),
    ],
)
def test_cli_fit_bank_errors(tmp_path: Path, args: list[str], match: str) -> None:
    emb_path = tmp_path / "train.npz"
    save_embeddings(emb_path, make_embeddings())
    r = runner.invoke(app, ["fit-bank", str(emb_path), *[a.replace("TMP", str(tmp_path)) for a in args]])
    assert r.exit_code == 1, r.output
    assert "Error:" in r.output and match in r.output and "Traceback" not in r.output


def test_cli_fit_bank_missing_input(tmp_path: Path) -> None:
    r = runner.invoke(app, ["fit-bank", str(tmp_path / "none.npz"), "--out", str(tmp_path / "b.npz")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_threshold_of_a_big_bank_is_fitted_on_a_seeded_sample(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    domain, names = np.full(200, "source"), np.array([f"c{i}.wav" for i in range(200)])
    full = F.build_bank(x, domain, names)
    monkeypatch.setattr(F, "THRESHOLD_SAMPLE", 50)
    sampled = F.build_bank(x, domain, names)
    assert sampled.loo_scores.shape == (50,)
    # The same LOO scores, fewer rows: fewer queries is another GEMM shape (another BLAS kernel on
    # some CPUs), so equal up to the rounding of a float32 dot of unit 16-d vectors.
    assert len(set(sampled.loo_rows.tolist())) == 50 and np.array_equal(full.loo_rows, np.arange(200))
    np.testing.assert_allclose(sampled.loo_scores, full.loo_scores[sampled.loo_rows], rtol=0, atol=unit_dot_atol(16))
    assert sampled.threshold_info["n_scores"] == 50
    again = F.build_bank(x, domain, names)
    np.testing.assert_array_equal(again.loo_scores, sampled.loo_scores)  # seeded
    B.save_bank(tmp_path / "b.npz", sampled)
    np.testing.assert_array_equal(B.load_bank(tmp_path / "b.npz").loo_scores, sampled.loo_scores)
