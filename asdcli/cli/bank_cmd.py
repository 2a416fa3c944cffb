"""`asd fit-bank`: build KNN banks from the train clips of an embeddings file."""

from __future__ import annotations

from pathlib import Path

import typer

from asdcli.artifacts import check_not_input, load_embeddings
from asdcli.backend.bank import Bank, BankConfig, save_bank, save_banks
from asdcli.backend.bank_fit import fit_bank, fit_banks, threshold_method
from asdcli.console import stderr_console
from asdcli.errors import ConfigError


def command(
    embeddings: Path = typer.Argument(..., help="Embeddings .npz from `asd embed` (its train clips are used)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write one bank to this .npz file."),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", help="Write bank_<machine>_section_<SS>.npz for every machine/section."
    ),
    machine: str | None = typer.Option(None, "--machine", "-m", help="Use the train clips of this machine only."),
    section: str | None = typer.Option(
        None, "--section", "-s", help="Use the train clips of this section only, e.g. 00."
    ),
    k: int = typer.Option(
        1, "--k", min=1, help="Score = mean of the K smallest cosine distances (1 = nearest neighbour)."
    ),
    score_norm: str = typer.Option(
        "none",
        "--score-norm",
        help="none (the seed's), density, domain-density or domain-zscore: how distances are normalized (README).",
    ),
    density_k: int | None = typer.Option(
        None,
        "--density-k",
        min=1,
        help="K of the density radii (whole bank, or the source bank); default sqrt(n)/3 rounded, n = the group's vectors.",
    ),
    density_k_target: int | None = typer.Option(
        None,
        "--density-k-target",
        min=1,
        help="domain-density: K of the target radii (at most n_target - 1); default the same rule.",
    ),
    condense_source: int | None = typer.Option(
        None,
        "--condense-source",
        min=1,
        help="Replace the source vectors by N k-means centres (all target vectors kept).",
    ),
    threshold_quantile: float = typer.Option(
        0.9,
        "--threshold-quantile",
        help="Decision threshold = this quantile of a gamma fit to leave-one-out bank scores.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed of the k-means condensation and of row samples in big banks."
    ),
    domain_aware: bool = typer.Option(False, "--domain-aware", hidden=True),
    density_norm: int | None = typer.Option(None, "--density-norm", hidden=True),
) -> None:
    """Build a KNN bank (mean/std + standardized, L2-normalized train embeddings + decision threshold).

    Examples: `asd fit-bank train.npz --out-dir banks/`, or `asd fit-bank train.npz --machine fan --out fan.npz`.
    """
    if (out is None) == (out_dir is None):
        raise ConfigError("Give exactly one of --out BANK.npz (one machine/section) or --out-dir DIR (all of them).")
    check_not_input(out, [embeddings], "--out")
    removed_options(domain_aware, density_norm)
    cfg = BankConfig(
        k=k,
        score_norm=score_norm,
        density_k=density_k,
        density_k_target=density_k_target,
        condense_source=condense_source,
        threshold_quantile=threshold_quantile,
        seed=seed,
    )
    emb = load_embeddings(embeddings)
    if out is not None:
        bank = fit_bank(emb, cfg, machine, section, what=str(embeddings))
        save_bank(out, bank)
        _report(bank, out)
        return
    assert out_dir is not None
    banks = fit_banks(emb, cfg, machine, section, what=str(embeddings))
    for (_key, bank), path in zip(sorted(banks.items()), save_banks(out_dir, banks)):
        _report(bank, path)


def removed_options(domain_aware: bool, density_norm: int | None) -> None:
    """Options of earlier versions: say what replaces them."""
    if domain_aware:
        raise ConfigError(
            "--domain-aware was removed: at k = 1 it scored exactly like the default; "
            "use --score-norm domain-density or --score-norm domain-zscore."
        )
    if density_norm is not None:
        raise ConfigError(f"--density-norm was replaced: use --score-norm density --density-k {density_norm}.")


def _report(bank: Bank, path: Path) -> None:
    domains = ", ".join(f"{int((bank.domain == d).sum())} {d or 'unknown'}" for d in sorted(set(bank.domain)))
    stderr_console().print(
        f"{bank.name}: {len(bank)} vectors ({domains}), dim {bank.dim}, "
        f"score norm {bank.config.score_norm}, threshold {bank.threshold:.4g} "
        f"({threshold_method(bank.threshold_info)}) -> {path}",
        markup=False,  # paths may hold [brackets]
        highlight=False,
        soft_wrap=True,
    )
