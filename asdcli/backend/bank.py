"""KNN banks: the training embeddings of one machine/section, standardized and L2-normalized,
with the decision threshold; fitting, saving and loading (``bank_<machine>_section_<SS>.npz``).

The default :class:`BankConfig` is exactly the seed's method: standardize with the bank's mean
and std, score = smallest cosine distance to the bank (k = 1), no condensation, no score
normalization (``--score-norm none``; the others are in :mod:`asdcli.backend.norm`).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from asdcli import __version__
from asdcli.artifacts import Embeddings, load_npz, save_npz_atomic
from asdcli.backend import bank_check, knn, norm
from asdcli.errors import ArtifactError, ArtifactNotFound, ConfigError, DataError

BANK_SCHEMA = 2
BANK_KIND = "asdcli-knn-bank"
# The threshold is fitted on at most this many leave-one-out scores (a seeded sample of the bank's
# rows): scoring all M rows against the bank costs O(M^2), which a 10^6-vector bank cannot afford.
THRESHOLD_SAMPLE = norm.STATS_SAMPLE


def check_quantile(quantile: Any) -> float:
    """``quantile`` if it is a number in (0, 1), else a ConfigError naming --threshold-quantile."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile < 1.0:
        raise ConfigError(f"--threshold-quantile must be in (0, 1), got {quantile!r}.")
    return float(quantile)


def _int_option(option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option} must be an integer of at least {minimum}, got {value!r}.")


@dataclass(frozen=True)
class BankConfig:
    """How a bank is built and scored (the defaults = the seed's method)."""

    k: int = 1  # score = mean of the k smallest (normalized) distances
    score_norm: str = "none"  # one of norm.SCORE_NORMS
    density_k: int | None = None  # K of the (source) density radii; None = norm.default_density_k
    density_k_target: int | None = None  # K of the target radii (domain-density); None = the rule
    condense_source: int | None = None  # k-means the source vectors to this many centres
    threshold_quantile: float = 0.9  # gamma quantile of the leave-one-out scores
    seed: int = 0  # k-means and sampling seed

    def __post_init__(self) -> None:
        _int_option("--k", self.k, 1)
        if self.score_norm not in norm.SCORE_NORMS:
            raise ConfigError(f"--score-norm must be one of {', '.join(norm.SCORE_NORMS)}, got {self.score_norm!r}.")
        for option, value in (
            ("--density-k", self.density_k),
            ("--density-k-target", self.density_k_target),
            ("--condense-source", self.condense_source),
        ):
            if value is not None:
                _int_option(option, value, 1)
        if self.density_k is not None and self.score_norm not in ("density", "domain-density"):
            raise ConfigError("--density-k needs --score-norm density or domain-density.")
        if self.density_k_target is not None and self.score_norm != "domain-density":
            raise ConfigError("--density-k-target needs --score-norm domain-density.")
        check_quantile(self.threshold_quantile)
        _int_option("--seed", self.seed, 0)

    def key(self) -> dict[str, Any]:
        """The options that change the bank (all of them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, what: str = "bank") -> BankConfig:
        if not isinstance(d, dict):
            raise ArtifactError(f"{what}: its bank options are not a JSON object; re-run `asd fit-bank`.")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ArtifactError(
                f"{what} has unknown bank options {sorted(unknown)}; it was made by another asdcli version."
            )
        try:
            return cls(**d)
        except ConfigError as e:
            raise ArtifactError(f"{what}: invalid bank options ({e}) Re-run `asd fit-bank`.") from e


@dataclass(frozen=True)
class Bank:
    """A fitted bank. ``vectors`` (M, D) float32 are standardized then L2-normalized.

    ``mean``/``std`` (D,) float32 are the raw training embeddings' statistics (std floored, see
    :func:`asdcli.backend.knn.standardization_stats`); ``domain``/``filenames`` (M,) describe each vector
    (k-means centres are named ``kmeans_centre_NNNN``); ``radii`` (M,) float32 divide distances
    (all 1 without density normalization); ``normalization`` holds the fitted statistics of the
    score norm (:func:`asdcli.backend.norm.fit_normalization`); ``loo_scores`` are the
    leave-one-out scores of the bank rows ``loo_rows`` (all rows, or a seeded sample of
    THRESHOLD_SAMPLE in big banks) that the ``threshold`` was fitted on, and ``loo_stats`` their
    (mean, std), used by `asd fuse`; ``embedding_meta`` is the meta of the source embeddings.
    """

    mean: np.ndarray
    std: np.ndarray
    vectors: np.ndarray
    domain: np.ndarray
    filenames: np.ndarray
    radii: np.ndarray
    loo_rows: np.ndarray
    loo_scores: np.ndarray
    threshold: float
    config: BankConfig = field(default_factory=BankConfig)
    normalization: dict[str, Any] = field(default_factory=dict)
    loo_stats: tuple[float, float] | None = None
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

    @functools.cached_property
    def groups(self) -> list[knn.Group]:
        """The row groups and normalizations :func:`knn.score` searches (built once per bank)."""
        return norm.score_groups(self.config.score_norm, self.domain, self.radii, self.normalization)

    def score_prepared(self, queries: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
        """Scores (Q,) float32 of already standardized + L2-normalized ``queries`` (Q, D)."""
        return knn.score(queries, self.vectors, self.groups, self.config.k, self_index=self_index)


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
    if vectors.shape[1] == 0:
        raise DataError(f"The train embeddings of {name} have 0 dimensions; re-create the embeddings file.")
    if not np.isfinite(vectors).all():
        raise DataError(f"The train embeddings of {name} contain NaN or inf; re-create the embeddings file.")
    if not (embedding_meta or {}).get("window"):  # windows of one recording share its name, and may repeat
        _check_each_clip_once(vectors, filenames, name)
    mean, std = knn.standardization_stats(vectors)
    prepared = knn.prepare(vectors, mean, std)
    if cfg.condense_source is not None:
        prepared, domain, filenames = _condense(prepared, domain, filenames, cfg.condense_source, cfg.seed)
    return fit_prepared(
        prepared, domain, filenames, mean, std, cfg, machine=machine, section=section, embedding_meta=embedding_meta
    )


def _check_each_clip_once(vectors: np.ndarray, filenames: np.ndarray, name: str) -> None:
    """DataError when a clip name or an embedding is in the train rows twice: its leave-one-out
    distance would be 0, and the threshold fitted on those distances meaningless."""
    first: dict[str, int] = {}
    for i, clip in enumerate(filenames):
        if first.setdefault(str(clip), i) != i:
            raise DataError(
                f"The train embeddings of {name} hold the clip {clip} twice; embed each train clip once "
                "(one folder per clip) and fit the bank again."
            )
    # identical rows have identical projections; distinct ones practically never do
    projection = vectors.astype(np.float64) @ np.random.default_rng(0).standard_normal(vectors.shape[1])
    order = np.argsort(projection, kind="stable")
    for k in np.flatnonzero(projection[order[1:]] == projection[order[:-1]]):
        a, b = order[k], order[k + 1]
        if np.array_equal(vectors[a], vectors[b]):
            raise DataError(
                f"The train embeddings of {name} hold one embedding twice ({filenames[a]} and {filenames[b]}: the "
                "same audio under two names?); keep one of them and fit the bank again."
            )


def fit_prepared(
    prepared: np.ndarray,
    domain: np.ndarray,
    filenames: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    cfg: BankConfig,
    *,
    machine: str = "",
    section: str = "",
    embedding_meta: dict[str, Any] | None = None,
) -> Bank:
    """A bank of already standardized, L2-normalized vectors ``prepared`` (M, D) with the given
    mean/std: the score normalization, leave-one-out scores and threshold fitted on them (also
    what enrolment refits after adding vectors under the bank's own mean/std)."""
    name = f"{machine or '?'} section {section or '?'}"
    m = prepared.shape[0]
    if cfg.k > m:
        raise ConfigError(f"--k {cfg.k} needs at least {cfg.k} bank vectors; the bank of {name} has {m}.")
    radii, stats = norm.fit_normalization(
        prepared, domain, cfg.score_norm, cfg.density_k, cfg.density_k_target, cfg.k, cfg.seed, name
    )
    rows = norm.sample_rows(np.arange(m), cfg.seed, THRESHOLD_SAMPLE)
    groups = norm.score_groups(cfg.score_norm, domain, radii, stats)
    loo = knn.score(prepared[rows], prepared, groups, cfg.k, self_index=rows).astype(np.float32)
    threshold, info = fit_threshold(loo, cfg.threshold_quantile)
    finite = loo[np.isfinite(loo)].astype(np.float64)
    return Bank(
        mean=mean,
        std=std,
        vectors=prepared,
        domain=domain,
        filenames=filenames,
        radii=radii,
        loo_rows=rows.astype(np.int64),
        loo_scores=loo,
        threshold=threshold,
        config=cfg,
        normalization=stats,
        loo_stats=(float(finite.mean()), float(finite.std())),
        machine=machine,
        section=section,
        embedding_meta=dict(embedding_meta or {}),
        threshold_info=info,
    )


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
    fit -> ``"empirical"``, ``np.quantile(scores, quantile)``; a gamma quantile below the smallest
    score -> ``"min"``, that score (``gamma_threshold`` keeps the quantile). The fitted location
    can lie far below the data (even below 0, where no cosine distance is), so a small quantile
    would flag every clip, the bank's own normal ones included; the data says nothing below it.
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
    gamma = {"gamma": [float(p) for p in params]}
    lowest = float(finite.min())
    if threshold < lowest:
        return lowest, {**info, "method": "min", **gamma, "gamma_threshold": threshold}
    return threshold, {**info, "method": "gamma", **gamma}


def threshold_method(info: dict[str, Any]) -> str:
    """How a threshold was fitted, for a report line (``threshold_info`` of a bank)."""
    method = str(info.get("method"))
    if method == "min" and "gamma_threshold" in info:
        return (
            f"min: the gamma quantile {float(info['gamma_threshold']):.4g} lies below every normal "
            "leave-one-out score, so the lowest one is the threshold"
        )
    return method


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
        raise DataError(
            f"{what} has no train clips (splits found: {', '.join(splits) or 'none'}); embed the train folder."
        )
    chosen = [p for p in pairs if (machine is None or p[0] == machine) and (section is None or p[1] == section)]
    if not chosen:
        raise DataError(
            f"{what} has no train clips of machine {machine or 'any'} section {section or 'any'}; it holds {_describe(pairs)}."
        )
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
    loo_stats = (
        None
        if bank.loo_stats is None
        else {"mean": bank.loo_stats[0], "std": bank.loo_stats[1], "n": int(bank.loo_scores.size)}
    )
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
        "normalization": bank.normalization,
        "threshold": {"value": bank.threshold, **bank.threshold_info},
        "loo_stats": loo_stats,
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
            "loo_rows": bank.loo_rows.astype(np.int64),
            "loo_scores": bank.loo_scores.astype(np.float32),
            "threshold": np.asarray(bank.threshold, dtype=np.float64),
            "meta": np.asarray(json.dumps(bank_meta(bank))),
        },
    )


def load_bank(path: str | Path) -> Bank:
    """Read a bank written by :func:`save_bank`.

    Every field is checked (:mod:`asdcli.backend.bank_check`): a wrong kind or schema, a shape,
    dtype or non-finite value, options that do not fit the bank: ArtifactError naming ``path``.
    """
    arrays = load_npz(path, bank_check.BANK_ARRAYS, what="bank")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path} has a meta record that is not a JSON object; re-run `asd fit-bank`.")
    bank_check.check_header(meta, path, BANK_KIND, BANK_SCHEMA)
    bank_check.check_arrays(arrays, path)
    cfg = BankConfig.from_dict(meta.get("config", {}), str(path))
    domain = arrays["domain"].astype(str)
    normalization = bank_check.check_options(meta, cfg.score_norm, cfg.k, domain, path)
    thr = meta.get("threshold", {})
    stats = meta.get("loo_stats")
    return Bank(
        mean=arrays["mean"].astype(np.float32),
        std=arrays["std"].astype(np.float32),
        vectors=np.ascontiguousarray(arrays["vectors"], dtype=np.float32),
        domain=domain,
        filenames=arrays["filenames"].astype(str),
        radii=arrays["radii"].astype(np.float32),
        loo_rows=arrays["loo_rows"].astype(np.int64),
        loo_scores=arrays["loo_scores"].astype(np.float32),
        threshold=float(arrays["threshold"]),
        config=cfg,
        normalization=normalization,
        loo_stats=None if stats is None else (float(stats["mean"]), float(stats["std"])),
        machine=str(meta.get("machine", "")),
        section=str(meta.get("section", "")),
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
