"""`asd enrol`: add normal clips of a new operating condition to a bank, without retraining."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from asdcli.console import stderr_console
from asdcli.errors import ConfigError


def command(
    bank_path: Path = typer.Argument(
        ..., metavar="BANK", help="Bank .npz to start from (left untouched unless --out names it).", show_default=False
    ),
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="CLIPS_OR_EMBEDDINGS...",
        help="Normal clips (.wav, folders) of the new condition, or embeddings .npz made like the bank's.",
        show_default=False,
    ),
    domain: str = typer.Option(
        ..., "--domain", help="Domain of the enrolled clips: target or source.", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The new bank .npz, written atomically.", show_default=False),
    restandardize: bool = typer.Option(
        False, "--restandardize", help="Refit mean/std on the training plus the new embeddings (needs --train)."
    ),
    train: Path | None = typer.Option(
        None, "--train", help="With --restandardize: the embeddings .npz the bank was fitted on."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="BEATs checkpoint for embedding clips (default: the bank's)."
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Fine-tuned run folder for embedding clips (default: the bank's)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Clips per batch when embedding (default: 2 on a CPU, where bigger batches are slower; 8 on a GPU).",
    ),
) -> None:
    """Enrol normal clips of a new condition into a bank: embeds them with the bank's own front
    end, keeps its mean/std (or --restandardize), refits radii and threshold, records the enrolment.

    `asd enrol banks/bank_fan_section_00.npz new_speed/*.wav --domain target --out fan_v2.npz`
    """
    from asdcli.artifacts import check_not_input, file_key, load_embeddings
    from asdcli.backend.bank import load_bank, save_bank
    from asdcli.backend.bank_fit import threshold_method
    from asdcli.backend.score import bank_front_end_files
    from asdcli.data.dataset import discover_clips
    from asdcli.monitor.enrol import enrol, enrolment_embeddings

    if restandardize != (train is not None):
        raise ConfigError(
            "--restandardize needs --train EMB.npz (the embeddings the bank was fitted on), and --train needs --restandardize."
        )
    audio = [p for p in inputs if p.suffix.lower() != ".npz"]
    found = [c.path for c in discover_clips(audio)] if audio else []
    check_not_input(out, [*inputs, *found, *([train] if train is not None else [])], "--out")
    before = file_key(bank_path) if bank_path.is_file() else None
    bank = load_bank(bank_path)
    check_not_input(out, bank_front_end_files(bank, checkpoint, adapter), "--out")
    new = enrolment_embeddings(bank, inputs, checkpoint, adapter, device, batch_size)
    train_emb = load_embeddings(train) if train is not None else None
    grown = enrol(bank, new, domain, train=train_emb, train_what=str(train), inputs=[str(p) for p in inputs])
    if out.exists() and os.path.samefile(out, bank_path) and file_key(bank_path) != before:
        raise ConfigError(  # another enrolment (or fit) wrote it meanwhile: saving would lose that one
            f"{bank_path} changed while enrolling (another `asd enrol` or `asd fit-bank` wrote it); run asd enrol again."
        )
    save_bank(out, grown)
    stderr_console().print(
        f"{bank.name}: enrolled {len(new)} {domain} embedding(s); {len(bank)} -> {len(grown)} vectors, "
        f"threshold {bank.threshold:.4g} -> {grown.threshold:.4g} ({threshold_method(grown.threshold_info)}) -> {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
