"""`asd package`: the DCASE 2025 Task 2 submission package (folder layout, meta YAML, zip)."""

from __future__ import annotations

from pathlib import Path

import typer

from asdcli.console import stderr_console


def _team(value: str) -> str:
    from asdcli.errors import ConfigError
    from asdcli.evaluate.package import check_team

    try:
        return check_team(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--team ")) from None


def command(
    source: Path = typer.Argument(
        ...,
        metavar="RUN_OR_SUBMISSION",
        help="A run folder of `asd run` (its submission/ is packed) or a submission folder.",
    ),
    team: str = typer.Option(
        ...,
        "--team",
        metavar="SURNAME_INST",
        callback=_team,
        help="Label prefix: the corresponding author's surname and the institute's abbreviation, e.g. Doe_ACME.",
    ),
    system: int = typer.Option(1, "--system", min=1, max=4, help="System number of this submission (1-4)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for task2/<label>/ and <label>.zip."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        metavar="DIR",
        help="Evaluation dataset root: every test clip must be in the package (default: the run's test embeddings).",
    ),
) -> None:
    """Pack a submission as the DCASE 2025 Task 2 upload: OUT/task2/<team>_task2_<N>/ with the score and decision files and a system meta YAML (what asdcli knows filled in, the rest FILL IN), and OUT/<team>_task2_<N>.zip.

    Checks first that every machine/section has both files, every test clip one row in each, every score is finite and every decision 0 or 1. Add your technical report (task2/<team>_task2.technical_report.pdf) before uploading.

    \b
    Example:
      asd package runs/eval --team Doe_ACME --system 1 -o pkg/ -d data/eval
    """
    from asdcli.evaluate.package import PackageConfig, write_package

    cfg = PackageConfig(source=source, team=team, system=system, out=out, data=data)
    archive, left_out = write_package(cfg)
    console = stderr_console()
    if left_out:
        console.print(
            f"Left out {len(left_out)} file(s) of machines that {data or 'the run'} has no test clips of: "
            f"{', '.join(left_out[:4])}{' ...' if len(left_out) > 4 else ''}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"Wrote {out / 'task2' / cfg.label}/ and {archive}; fill in the FILL IN fields of "
        f"{cfg.label}.meta.yaml and add the technical report before uploading.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    typer.echo(str(archive))
