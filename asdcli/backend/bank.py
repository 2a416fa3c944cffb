"""KNN banks: the bank record and its options, saved and loaded as ``bank_<machine>_section_<SS>.npz``.

A bank holds the training embeddings of one machine/section, standardized and L2-normalized, with
the decision threshold; :mod:`asdcli.backend.bank_fit` fits it.

The default :class:`BankConfig` is exactly the seed's method: standardize with the bank's mean
and std, score = smallest cosine distance to the bank (k = 1), no condensation, no score
normalization (``--score-norm none``; the others are in :mod:`asdcli.backend.norm`).
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from asdcli import __version__
from asdcli.artifacts import load_npz, save_npz_atomic
from asdcli.backend import bank_check, knn, norm
from asdcli.errors import ArtifactError, ArtifactNotFound, AsdWarning, ConfigError

BANK_SCHEMA = 2
BANK_KIND = "asdcli-knn-bank"


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
    :data:`asdcli.backend.bank_fit.THRESHOLD_SAMPLE` in big banks) that the ``threshold`` was fitted on, and ``loo_stats`` their
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
    loo_scores = arrays["loo_scores"].astype(np.float32)
    threshold, info = floored_threshold(float(arrays["threshold"]), meta.get("threshold", {}), loo_scores, path)
    stats = meta.get("loo_stats")
    return Bank(
        mean=arrays["mean"].astype(np.float32),
        std=arrays["std"].astype(np.float32),
        vectors=np.ascontiguousarray(arrays["vectors"], dtype=np.float32),
        domain=domain,
        filenames=arrays["filenames"].astype(str),
        radii=arrays["radii"].astype(np.float32),
        loo_rows=arrays["loo_rows"].astype(np.int64),
        loo_scores=loo_scores,
        threshold=threshold,
        config=cfg,
        normalization=normalization,
        loo_stats=None if stats is None else (float(stats["mean"]), float(stats["std"])),
        machine=str(meta.get("machine", "")),
        section=str(meta.get("section", "")),
        embedding_meta=dict(meta.get("embedding", {})),
        threshold_info=info,
    )


def floored_threshold(
    threshold: float, record: dict[str, Any], loo_scores: np.ndarray, path: str | Path
) -> tuple[float, dict[str, Any]]:
    """A bank file's threshold and its record, raised to the lowest leave-one-out score where it lies
    below it (a bank fitted before :func:`asdcli.backend.bank_fit.fit_threshold` had that floor):
    exactly the threshold a refit gives, since the scores it is fitted on are the file's. Says so
    with one :class:`~asdcli.errors.AsdWarning`."""
    info = {k: v for k, v in record.items() if k != "value"}
    lowest = float(loo_scores.min())
    if threshold >= lowest:
        return threshold, info
    warnings.warn(
        f"{path} has the threshold {threshold:.4g}, below every normal leave-one-out score (it was fitted "
        f"before asdcli raised such a threshold to the lowest one); using {lowest:.4g}, as a refit would. "
        "Refit it with `asd fit-bank` to store it.",
        AsdWarning,
        stacklevel=3,
    )
    raised = {**info, "method": "min", "raised_at_load_from": threshold}
    if info.get("method") == "gamma":
        raised["gamma_threshold"] = threshold
    return lowest, raised


def bank_paths(folder: str | Path) -> list[Path]:
    """The bank files of a folder, sorted: the ``bank_*.npz`` that :func:`load_banks` reads."""
    return sorted(Path(folder).glob("bank_*.npz"))


def load_banks(folder: str | Path) -> dict[tuple[str, str], Bank]:
    """Every ``bank_*.npz`` in ``folder``, keyed by (machine, section); duplicates are an error."""
    return {key: bank for key, (_, bank) in load_bank_files(folder).items()}


def load_bank_files(folder: str | Path) -> dict[tuple[str, str], tuple[Path, Bank]]:
    """:func:`load_banks` with each bank's file: (path, bank) keyed by (machine, section)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactNotFound(f"Bank folder {folder} does not exist; write it with `asd fit-bank --out-dir`.")
    banks: dict[tuple[str, str], tuple[Path, Bank]] = {}
    for path in bank_paths(folder):
        bank = load_bank(path)
        key = (bank.machine, bank.section)
        if key in banks:
            raise ArtifactError(f"{folder} holds two banks for {bank.name}; keep one.")
        banks[key] = (path, bank)
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
