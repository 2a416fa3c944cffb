"""`asd export`: the embedder (fbank, BEATs, LoRA merged, head) as one ONNX model, verified."""

from __future__ import annotations

from pathlib import Path

import typer

from asdcli.console import stderr_console


def command(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output ONNX model (.onnx), written only after it was verified.", show_default=False
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Run folder of `asd finetune`: export the fine-tuned model, LoRA merged."
    ),
    embedding: str | None = typer.Option(None, "--embedding", help="With --adapter: 'head' (default) or 'pooled'."),
    int8: bool = typer.Option(
        False, "--int8", help="Quantize the linear layers to int8 with ONNX Runtime (dynamic, U8U8)."
    ),
    seconds: float = typer.Option(
        10.0, "--seconds", help="Length of the random clips the ONNX model is checked on against torch."
    ),
) -> None:
    """Export the embedder as one ONNX model: 16 kHz waveform (batch, samples) -> embeddings (batch, D).

    The fbank is inside the model; batch size and clip length are free (at least 0.175 s).

    After the export ONNX Runtime embeds random clips and is compared with asdcli's torch path (max abs diff at most 1e-4 in fp32, cosine at least 0.99 with --int8); nothing is written if it differs. Run the model with `asd embed --onnx MODEL`. Needs `pip install 'asdcli\\[onnx]'`.
    """
    from asdcli.artifacts import check_not_input
    from asdcli.frontend.embedder import EmbedConfig, build_embedder, front_end_files
    from asdcli.frontend.export import export_onnx

    check_not_input(out, front_end_files(checkpoint, adapter), "--out")
    embedder = build_embedder(EmbedConfig(checkpoint=checkpoint, adapter=adapter, embedding=embedding, device="cpu",
                                          seconds=seconds))  # fmt: skip
    result = export_onnx(embedder.module, embedder.meta, out, int8=int8, seconds=seconds)
    check = f"min cosine {result.min_cosine:.5f}" if int8 else f"max abs diff {result.max_abs_diff:.1e}"
    stderr_console().print(
        f"Exported {'int8' if int8 else 'fp32'} {result.meta['embedding_dim']}-d embedder -> {out} "
        f"(ONNX Runtime vs torch on {result.clips} random clips: {check})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
