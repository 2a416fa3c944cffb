"""`asd run`: the whole challenge pipeline in one run folder, through the same stage functions.

RUN_DIR/
  finetune/            adapter/, head.safetensors, run.json, state/   (absent with --no-finetune)
  embeddings/          train.npz, test.npz
  banks/               bank_<machine>_section_<SS>.npz
  submission/          anomaly_score_*.csv, decision_result_*.csv     (the challenge folder)
  report.csv           official metrics (when the test clips are labelled)
  stages/<name>.json   what each finished stage was made from and the files it wrote
  .asd-run.lock        while a run uses the folder (pid and host)

A stage is skipped when its record has the key of its inputs and options and every file it
recorded is unchanged (size and SHA-256); otherwise it runs again. Every artifact is written
atomically and a stage's record only after its outputs, so an interrupted run never looks
finished and the next run continues (fine-tuning resumes after its last finished epoch,
embedding after its last saved part of EMBED_CHUNK clips). A run removes only files asdcli
wrote: those its stage records list and fine-tuning's own file names in RUN_DIR/finetune.
Each stage's inputs and work are in :mod:`asdcli.pipeline.run_stages`; this module holds the
run's config, its clips and the order of the stages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from asdcli.artifacts import cached_sha256
from asdcli.backend.bank import BankConfig
from asdcli.data.audio import AudioConfig, probe_clips
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip, require_field
from asdcli.errors import AsdError, ConfigError, DataError
from asdcli.finetune.config import FinetuneConfig
from asdcli.frontend.embedder import EmbedConfig
from asdcli.pipeline.lock import run_folder_lock
from asdcli.pipeline.run_stages import (
    RunCheckpoint,
    StageRunner,
    bank_stage,
    embed_stage,
    finetune_stage,
    report_stage,
    score_stage,
)

if TYPE_CHECKING:
    from asdcli.evaluate.report import SystemReport

# what the embedding options share with fine-tuning: set once, in RunConfig.embed
FRONTEND_FIELDS = ("checkpoint", "seconds", "channel", "device", "num_workers")


@dataclass(frozen=True)
class RunConfig:
    """One `asd run`: where the data and the run folder are, and each stage's config.

    ``embed`` describes the front end (checkpoint, clip seconds, channel, device, workers), the
    embedding batch and, when fine-tuning, the adapter: the run's own ``RUN_DIR/finetune``. The
    fine-tuning config takes those front-end fields from ``embed`` (``finetune_config``), so both
    stages see the same clips from the same checkpoint. ``finetune`` None means --no-finetune:
    embeddings are the frozen backbone's mean-pooled tokens.
    """

    data_root: Path
    run_dir: Path
    embed: EmbedConfig
    finetune: FinetuneConfig | None
    bank: BankConfig = BankConfig()  # noqa: RUF009 (frozen: one shared default is safe)
    plots: bool = False

    def __post_init__(self) -> None:
        if self.embed.adapter != (None if self.finetune is None else self.finetune_dir):
            raise ConfigError(
                f"The embedding adapter of asd run is its own fine-tuning folder {self.finetune_dir}, "
                "or none with --no-finetune."
            )
        if self.embed.checkpoint is None:
            raise ConfigError("asd run needs a resolved --checkpoint.")
        AudioConfig(seconds=self.embed.seconds, channel=self.embed.channel)  # --seconds in range, before any work

    @property
    def checkpoint(self) -> Path:
        assert self.embed.checkpoint is not None
        return Path(self.embed.checkpoint)

    @property
    def finetune_config(self) -> FinetuneConfig | None:
        """The fine-tuning options with the front end's fields."""
        if self.finetune is None:
            return None
        return dataclasses.replace(self.finetune, **{f: getattr(self.embed, f) for f in FRONTEND_FIELDS})

    @property
    def finetune_dir(self) -> Path:
        return self.run_dir / "finetune"

    @classmethod
    def create(
        cls,
        data_root: Path,
        run_dir: Path,
        embed: EmbedConfig,
        finetune: FinetuneConfig | None,
        bank: BankConfig = BankConfig(),
        plots: bool = False,
        embedding: str | None = None,
    ) -> RunConfig:
        """A RunConfig whose ``embed`` (given without adapter) gets the run's fine-tuning folder as
        its adapter and ``embedding`` ("head" or "pooled") as the fine-tuned vector to use."""
        if finetune is None and embedding is not None:
            raise ConfigError("--embedding chooses the fine-tuned model's vector; drop it with --no-finetune.")
        adapter = None if finetune is None else run_dir / "finetune"
        return cls(
            data_root, run_dir, dataclasses.replace(embed, adapter=adapter, embedding=embedding), finetune, bank, plots
        )


@dataclass(frozen=True)
class RunResult:
    """What `asd run` produced: the submission folder, the report (None without labels), and
    which stages ran or were up to date."""

    run_dir: Path
    submission_dir: Path | None
    report: SystemReport | None
    ran: tuple[str, ...]
    skipped: tuple[str, ...]


def _clips(data_root: Path) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """(train, test, supplemental) clips under ``data_root``; no train clips is a DataError."""
    clips = discover_clips([data_root], splits={"train", "test", "supplemental"})
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    extra = [c for c in clips if c.split == "supplemental"]
    if not train:
        raise DataError(
            f"{data_root} holds no train clips (DATA/<machine>/train/*.wav); point asd run at a dataset root."
        )
    for field in ("machine", "section"):
        require_field(train, field, "asd run")
    machines_with_train = {c.machine for c in train}
    orphans = sorted({c.machine for c in test} - machines_with_train)
    if orphans:
        raise DataError(
            f"Machine(s) {', '.join(orphans)} under {data_root} have test clips but no train clips; "
            "add their train/ folder or remove them."
        )
    return train, test, extra


def _labelled_machines(test: list[Clip]) -> set[str]:
    """The machines whose test file names carry labels and domains (dev data): the report's."""
    return {c.machine for c in test if c.label and c.domain}


def run_pipeline(cfg: RunConfig, console: Console | None = None) -> RunResult:
    """Run finetune -> embed -> fit-bank -> score -> report under ``cfg.run_dir`` (locked meanwhile).

    Stages whose record matches are skipped. Without test clips the run stops after the banks;
    without labels on the test clips (eval data) it stops after the submission folder.
    """
    from asdcli.processes import process_state

    if process_state().num_processes > 1:
        raise ConfigError(
            "asd run is single-process; under accelerate launch run `asd finetune` and `asd embed` "
            "instead, then fit-bank/score on one process."
        )
    train, test, extra = _clips(cfg.data_root)
    if cfg.plots and not _labelled_machines(test):
        raise ConfigError(
            f"--plots draws the report of labelled test clips, but no test file name under {cfg.data_root} "
            "carries labels (evaluation data, or no test clips); drop --plots."
        )
    durations = probe_clips([*train, *test], cfg.embed.channel)  # a bad test clip fails now, not after fine-tuning
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AsdError(f"Cannot create the run folder {cfg.run_dir}: {e.strerror or e}. Choose another --out.") from e
    runner = StageRunner(cfg.run_dir, console)
    with run_folder_lock(cfg.run_dir, lambda text: runner.say(text, "[yellow]Warning:[/] ")):
        return _run_stages(cfg, train, test, extra, durations, runner)


def _run_stages(
    cfg: RunConfig, train: list[Clip], test: list[Clip], extra: list[Clip], durations: list[float], runner: StageRunner
) -> RunResult:
    ckpt = RunCheckpoint(cfg.checkpoint, cached_sha256(cfg.checkpoint))
    n_machines = len({c.machine for c in train})
    runner.say(
        f"Run folder {cfg.run_dir}: {len(train)} train and {len(test)} test clips of {n_machines} machine(s) "
        f"under {cfg.data_root}."
    )
    adapter, upstream = None, "off"
    if cfg.finetune is not None:
        adapter, finetuned = finetune_stage(cfg, train, extra, ckpt, runner)
        upstream = finetuned.outputs_id()
    else:
        runner.say(": off (--no-finetune), frozen BEATs", runner.header("finetune"))
    train_path, test_path, embed = embed_stage(cfg, [*train, *test], durations, adapter, upstream, ckpt, runner)
    banks = bank_stage(cfg, train_path, embed, runner)
    submission = report = None
    if test:
        submission = score_stage(cfg, test_path, embed, banks, runner)
        labelled = _labelled_machines(test)
        if labelled:  # dev machines; eval machines next to them are left out of the report
            report = report_stage(cfg, submission, runner)
        unlabelled = sorted({c.machine for c in test} - labelled)
        if unlabelled:
            runner.say(
                f"No labels in the test file names of {', '.join(unlabelled)} (eval data), so no report for "
                f"them: their files in {submission} are the challenge submission; pack them with "
                f"`asd package {cfg.run_dir} --data EVAL_ROOT --team NAME --system N --out DIR`."
            )
    else:
        runner.say(
            f"No test clips under {cfg.data_root}: banks are in {cfg.run_dir / 'banks'}; score later with "
            "`asd score --banks`."
        )
    return RunResult(cfg.run_dir, submission, report, tuple(runner.ran), tuple(runner.skipped))


def show_report(report: SystemReport, console: Console) -> None:
    """The compact summary on ``console`` (stderr), terminal or not; the full table is report.csv."""
    from asdcli.evaluate.render import run_summary

    for line in run_summary(report):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
