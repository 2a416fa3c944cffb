"""KNN banks: the training embeddings of one machine/section, standardized and L2-normalized,
with the decision threshold; fitting, saving and loading (``bank_<machine>_section_<SS>.npz``).

The default :class:`BankConfig` is exactly the seed's method: standardize with the bank's mean
and std, score = smallest cosine distance to the bank (k = 1), no domain split, no condensation,
no density normalization.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from asdcli import __version__

from asdcli.backend import knn
from asdcli.artifacts import Embeddings, json_meta, load_npz, save_npz_atomic
from asdcli.errors import ArtifactError, ArtifactNotFound, ConfigError, DataError

BANK_SCHEMA = 1
BANK_KIND = "asdcli-knn-bank"
# The threshold is fitted on at most this many leave-one-out scores (a seeded sample of the bank's
# rows): scoring all M rows against the bank costs O(M^2), which a 10^6-vector bank cannot afford.
THRESHOLD_SAMPLE = 10_000


@dataclass(frozen=True)
class BankConfig:
    """How a bank is built and scored (all options off = the seed's method)."""

    k: int = 1  # score = mean of the k smallest distances
    domain_aware: bool = False  # search each domain's vectors alone, score = min over domains
    condense_source: int | None = None  # k-means the source vectors to this many centres
    density_norm: int | None = None  # divide distances by the reference's mean K-NN distance
    threshold_quantile: float = 0.9  # gamma quantile of the leave-one-out scores
    seed: int = 0  # k-means seed

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"--k must be at least 1, got {self.k}.")
        if self.condense_source is not None and self.condense_source < 1:
            raise ConfigError(f"--condense-source must be at least 1, got {self.condense_source}.")
        if self.density_norm is not None and self.density_norm < 1:
            raise ConfigError(f"--density-norm must be at least 1, got {self.density_norm}.")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ConfigError(f"--threshold-quantile must be in (0, 1), got {self.threshold_quantile}.")

    def key(self) -> dict[str, Any]:
        """The options that change the bank (all of them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "bank") -> BankConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ArtifactError(f"{what} has unknown bank options {sorted(unknown)}; it was made by another asdcli version.")
        return cls(**d)


@dataclass(frozen=True)
class Bank:
    """A fitted bank. ``vectors`` (M, D) float32 are standardized then L2-normalized.

    ``mean``/``std`` (D,) float32 are the raw training embeddings' statistics (std floored, see
    :func:`asdcli.backend.knn.standardization_stats`); ``domain``/``filenames`` (M,) describe each vector
    (k-means centres are named ``kmeans_centre_NNNN``); ``radii`` (M,) float32 divide distances
    (all 1 without density normalization); ``loo_scores`` (min(M, THRESHOLD_SAMPLE),) are the
    leave-one-out scores the ``threshold`` was fitted on (of a seeded sample of rows in big banks);
    ``embedding_meta`` is the meta of the source embeddings.
    """

    mean: np.ndarray
    std: np.ndarray
    vectors: np.ndarray
    domain: np.ndarray
    filenames: np.ndarray
    radii: np.ndarray
    loo_scores: np.ndarray
    threshold: float
    config: BankConfig = field(default_factory=BankConfig)
    machine: str = ""
    section: str = ""
    embedding_meta: dict[str, Any] = field(default_factory=dict)
    threshold_info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def name(self) -> str:
        return f"{self.machine or '?'} section {self.section or '?'}"

    def score_prepared(self, queries: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
        """Scores (Q,) float32 of already standardized + L2-normalized ``queries`` (Q, D)."""
        return knn.bank_score(
            queries,
            self.vectors,
            self.config.k,
            groups=self.domain if self.config.domain_aware else None,
            scale=self.radii if self.config.density_norm else None,
            self_index=self_index,
        )


def bank_filename(machine: str, section: str) -> str:
    """``bank_<machine>_section_<SS>.npz``."""
    return f"bank_{machine}_section_{section}.npz"


def build_bank(
    vectors: np.ndarray,
    domain: np.ndarray,
    filenames: np.ndarray,
    cfg: BankConfig = BankConfig(),
    *,
    machine: str = "",
    section: str = "",
    embedding_meta: dict[str, Any] | None = None,
) -> Bank:
    """Fit a bank on raw training embeddings ``vectors`` (N, D) with their ``domain``/``filenames`` (N,).

    Raises DataError when N < 2 and ConfigError when k or the density K need more vectors.
    """
    name = f"{machine or '?'} section {section or '?'}"
    vectors = np.asarray(vectors, dtype=np.float32)
    domain, filenames = np.asarray(domain, dtype=str), np.asarray(filenames, dtype=str)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise DataError(f"The bank of {name} needs at least 2 train clips, got {vectors.shape[0]}.")
    if not np.isfinite(vectors).all():
        raise DataError(f"The train embeddings of {name} contain NaN or inf; re-create the embeddings file.")
    mean, std = knn.standardization_stats(vectors)
    prepared = knn.prepare(vectors, mean, std)
    if cfg.condense_source is not None:
        prepared, domain, filenames = _condense(prepared, domain, filenames, cfg.condense_source, cfg.seed)
    m = prepared.shape[0]
    if cfg.k > m:
        raise ConfigError(f"--k {cfg.k} needs at least {cfg.k} bank vectors; the bank of {name} has {m}.")
    radii = np.ones(m, dtype=np.float32)
    if cfg.density_norm is not None:
        if cfg.density_norm > m - 1:
            raise ConfigError(
                f"--density-norm {cfg.density_norm} needs at least {cfg.density_norm + 1} bank vectors; "
                f"the bank of {name} has {m}."
            )
        radii = knn.density_radii(prepared, cfg.density_norm)
    bank = Bank(mean, std, prepared, domain, filenames, radii, np.zeros(m, np.float32), math.nan, cfg,
                machine, section, dict(embedding_meta or {}))
    rows = np.arange(m)
    if m > THRESHOLD_SAMPLE:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(m, THRESHOLD_SAMPLE, replace=False))
    loo = bank.score_prepared(prepared[rows], self_index=rows)
    threshold, info = fit_threshold(loo, cfg.threshold_quantile)
    return Bank(mean, std, prepared, domain, filenames, radii, loo.astype(np.float32), threshold, cfg,
                machine, section, dict(embedding_meta or {}), info)


def _condense(
    prepared: np.ndarray, domain: np.ndarray, filenames: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace the source rows by ``n`` k-means centres; every other row is kept as is."""
    src = domain == "source"
    if n >= int(src.sum()):
        return prepared, domain, filenames  # nothing to condense
    centres = knn.kmeans_centres(prepared[src], n, seed)
    names = np.array([f"kmeans_centre_{i:04d}" for i in range(n)], dtype=str)
    vectors = np.concatenate([centres, prepared[~src]]).astype(np.float32)
    dom = np.concatenate([np.full(n, "source"), domain[~src]]).astype(str)
    return np.ascontiguousarray(vectors), dom, np.concatenate([names, filenames[~src]]).astype(str)


def fit_threshold(scores: np.ndarray, quantile: float = 0.9) -> tuple[float, dict[str, Any]]:
    """Decision threshold from normal scores: ``scipy.stats.gamma.ppf(quantile, *gamma.fit(scores))``.

    Fallbacks (recorded as ``method``): fewer than 3 finite scores or no spread -> ``"max"``, the
    largest score (only scores above every normal one are anomalies); a failed or non-finite gamma
    fit -> ``"empirical"``, ``np.quantile(scores, quantile)``.
    """
    from scipy import stats

    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    info: dict[str, Any] = {"quantile": quantile, "n_scores": int(finite.size)}
    if finite.size == 0:
        raise DataError("No finite leave-one-out score to fit the decision threshold on.")
    spread = float(np.ptp(finite))
    if finite.size < 3 or spread <= 1e-9 * max(abs(float(finite.mean())), 1e-12):
        return float(finite.max()), {**info, "method": "max"}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            params = stats.gamma.fit(finite)
            threshold = float(stats.gamma.ppf(quantile, *params))
    except (RuntimeError, ValueError, FloatingPointError):
        params, threshold = (), math.nan
    if not math.isfinite(threshold):
        return float(np.quantile(finite, quantile)), {**info, "method": "empirical"}
    return threshold, {**info, "method": "gamma", "gamma": [float(p) for p in params]}


def train_groups(emb: Embeddings) -> list[tuple[str, str]]:
    """The sorted (machine, section) pairs that have train clips in ``emb``."""
    train = emb.split == "train"
    return sorted({(str(m), str(s)) for m, s in zip(emb.machine[train], emb.section[train])})


def _describe(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{m or '?'} section {s or '?'}" for m, s in pairs)


def select_group(
    emb: Embeddings, machine: str | None = None, section: str | None = None, what: str = "the embeddings"
) -> tuple[str, str]:
    """The single (machine, section) with train clips matching the filters, or a clear error."""
    pairs = train_groups(emb)
    if not pairs:
        splits = sorted({s or "unknown" for s in emb.split})
        raise DataError(f"{what} has no train clips (splits found: {', '.join(splits) or 'none'}); embed the train folder.")
    chosen = [p for p in pairs if (machine is None or p[0] == machine) and (section is None or p[1] == section)]
    if not chosen:
        raise DataError(f"{what} has no train clips of machine {machine or 'any'} section {section or 'any'}; it holds {_describe(pairs)}.")
    if len(chosen) > 1:
        raise ConfigError(
            f"{what} holds train clips of several machines/sections ({_describe(chosen)}); "
            "choose one with --machine/--section or write one bank each with --out-dir."
        )
    return chosen[0]


def fit_bank(
    emb: Embeddings,
    cfg: BankConfig = BankConfig(),
    machine: str | None = None,
    section: str | None = None,
    what: str = "the embeddings",
) -> Bank:
    """Fit the bank of one machine/section from the train rows of ``emb``.

    ``machine``/``section`` may be omitted when ``emb`` holds train clips of only one of each.
    """
    m, s = select_group(emb, machine, section, what)
    rows = emb.select((emb.split == "train") & (emb.machine == m) & (emb.section == s))
    return build_bank(rows.vectors, rows.domain, rows.filenames, cfg, machine=m, section=s, embedding_meta=emb.meta)


def fit_banks(
    emb: Embeddings,
    cfg: BankConfig = BankConfig(),
    machine: str | None = None,
    section: str | None = None,
    what: str = "the embeddings",
) -> dict[tuple[str, str], Bank]:
    """One bank per (machine, section) with train clips in ``emb`` (optionally filtered), keyed
    by that pair; no matching train clip is a DataError."""
    pairs = [p for p in train_groups(emb) if machine in (None, p[0]) and section in (None, p[1])]
    if not pairs:
        select_group(emb, machine, section, what)  # raises the "no train clips" error
    return {p: fit_bank(emb, cfg, p[0], p[1], what) for p in pairs}


def bank_meta(bank: Bank) -> dict[str, Any]:
    """The JSON meta record stored in a bank file."""
    counts = {str(d) or "unknown": int((bank.domain == d).sum()) for d in np.unique(bank.domain)}
    return {
        "schema_version": BANK_SCHEMA,
        "kind": BANK_KIND,
        "tool_version": __version__,
        "machine": bank.machine,
        "section": bank.section,
        "dim": bank.dim,
        "n_vectors": len(bank),
        "domains": counts,
        "config": asdict(bank.config),
        "threshold": {"value": bank.threshold, **bank.threshold_info},
        "std_floor": {"relative_to_mean_std": knn.STD_FLOOR_REL, "absolute": knn.STD_FLOOR_ABS},
        "embedding": bank.embedding_meta,
    }


def save_bank(path: str | Path, bank: Bank) -> None:
    """Write ``bank`` atomically as an npz (no pickles); see :func:`bank_meta` for ``meta``."""
    save_npz_atomic(
        path,
        {
            "mean": bank.mean.astype(np.float32),
            "std": bank.std.astype(np.float32),
            "vectors": bank.vectors.astype(np.float32),
            "domain": bank.domain.astype(str),
            "filenames": bank.filenames.astype(str),
            "radii": bank.radii.astype(np.float32),
            "loo_scores": bank.loo_scores.astype(np.float32),
            "threshold": np.asarray(bank.threshold, dtype=np.float64),
            "meta": np.asarray(json.dumps(bank_meta(bank))),
        },
    )


_BANK_ARRAYS = ("mean", "std", "vectors", "domain", "filenames", "radii", "loo_scores", "threshold", "meta")


def load_bank(path: str | Path) -> Bank:
    """Read a bank written by :func:`save_bank`; wrong kind, schema or shapes are ArtifactError."""
    arrays = load_npz(path, _BANK_ARRAYS, what="bank")
    meta = json_meta(arrays, path)
    if meta.get("kind") != BANK_KIND:
        raise ArtifactError(f"{path} is not a bank file (kind {meta.get('kind')!r}); make one with `asd fit-bank`.")
    if meta.get("schema_version") != BANK_SCHEMA:
        raise ArtifactError(
            f"{path} has bank schema {meta.get('schema_version')}, this asdcli reads {BANK_SCHEMA}; re-run `asd fit-bank`."
        )
    vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
    if vectors.ndim != 2:
        raise ArtifactError(f"{path}: vectors must be 2-D, got shape {vectors.shape}; re-run `asd fit-bank`.")
    m, d = vectors.shape
    for key, shape in (("mean", (d,)), ("std", (d,)), ("domain", (m,)), ("filenames", (m,)), ("radii", (m,))):
        if arrays[key].shape != shape:
            raise ArtifactError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape}; re-run `asd fit-bank`.")
    loo_shape = arrays["loo_scores"].shape  # (M,), or a sample of the rows in big banks
    if len(loo_shape) != 1 or not 1 <= loo_shape[0] <= m:
        raise ArtifactError(f"{path}: loo_scores has shape {loo_shape}, expected (n,) with 1 <= n <= {m}; "
                            "re-run `asd fit-bank`.")
    thr = meta.get("threshold", {})
    return Bank(
        mean=arrays["mean"].astype(np.float32), std=arrays["std"].astype(np.float32), vectors=vectors,
        domain=arrays["domain"].astype(str), filenames=arrays["filenames"].astype(str),
        radii=arrays["radii"].astype(np.float32), loo_scores=arrays["loo_scores"].astype(np.float32),
        threshold=float(arrays["threshold"]), config=BankConfig.from_dict(meta.get("config", {}), str(path)),
        machine=str(meta.get("machine", "")), section=str(meta.get("section", "")),
        embedding_meta=dict(meta.get("embedding", {})),
        threshold_info={k: v for k, v in thr.items() if k != "value"},
    )


def load_banks(folder: str | Path) -> dict[tuple[str, str], Bank]:
    """Every ``bank_*.npz`` in ``folder``, keyed by (machine, section); duplicates are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactNotFound(f"Bank folder {folder} does not exist; write it with `asd fit-bank --out-dir`.")
    banks: dict[tuple[str, str], Bank] = {}
    for path in sorted(folder.glob("bank_*.npz")):
        bank = load_bank(path)
        key = (bank.machine, bank.section)
        if key in banks:
            raise ArtifactError(f"{folder} holds two banks for {bank.name}; keep one.")
        banks[key] = bank
    if not banks:
        raise ArtifactNotFound(f"{folder} holds no bank_*.npz files; write them with `asd fit-bank --out-dir`.")
    return banks


def save_banks(folder: str | Path, banks: dict[tuple[str, str], Bank]) -> list[Path]:
    """Write each bank to ``folder/bank_<machine>_section_<SS>.npz``; returns the paths."""
    paths = []
    for (m, s), bank in sorted(banks.items()):
        path = Path(folder) / bank_filename(m, s)
        save_bank(path, bank)
        paths.append(path)
    return paths
