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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from asdcli.artifacts import cached_sha256
from asdcli.backend.bank import BankConfig
from asdcli.data.audio import AudioConfig, probe_clips
from asdcli.data.dataset import Clip, discover_clips, require_field
from asdcli.errors import AsdError, ConfigError, DataError
from asdcli.finetune.config import FinetuneConfig
from asdcli.frontend.embed import EmbedConfig, embed_inputs, embed_to_file
from asdcli.pipeline.cleanup import (
    remove_finetune_files,
    remove_own_files,
)
from asdcli.pipeline.lock import run_folder_lock
from asdcli.pipeline.run_check import score_inputs
from asdcli.pipeline.stages import Stage, files_fingerprint, stage_key

if TYPE_CHECKING:
    from asdcli.evaluate.report import SystemReport
    from asdcli.frontend.beats.checkpoint import LoadedBeats

STAGE_NAMES = ("finetune", "embed", "fit-bank", "score", "report")
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


class StageRunner:
    """Runs the stages of one run folder in order, skipping fresh ones, and remembers what happened."""

    def __init__(self, run_dir: Path, console: Console | None) -> None:
        self.run_dir = run_dir
        self.console = console
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def say(self, text: str, head: str = "") -> None:
        """Print ``head`` (Rich markup) followed by ``text`` (shown verbatim: paths may hold brackets)."""
        if self.console is not None:
            self.console.print(head + escape(text), highlight=False, soft_wrap=True)

    @staticmethod
    def header(name: str) -> str:
        return f"[bold][{STAGE_NAMES.index(name) + 1}/{len(STAGE_NAMES)}] {name}[/]"

    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        what: str,
        work: Callable[[Stage], tuple[Sequence[Path], dict[str, Any]]],
    ) -> Stage:
        """Run stage ``name`` unless it is fresh; ``work`` returns its output files and details."""
        stage = Stage(self.run_dir, name, stage_key(inputs))
        head = self.header(name)
        if stage.is_fresh():
            self.say(f": up to date, skipped ({what})", head)
            self.skipped.append(name)
            return stage
        self.say(f": {what}", head)
        start = time.perf_counter()
        outputs, details = work(stage)
        stage.mark_done(outputs, {"seconds": round(time.perf_counter() - start, 3), **details})
        self.ran.append(name)
        self.say(f": done in {time.perf_counter() - start:.1f} s", head)
        return stage


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


@dataclass
class RunCheckpoint:
    """The run's checkpoint as one resource: its SHA-256 for the stage keys now, the model loaded
    by the first stage that runs and then shared (a run opens and hashes its checkpoint once)."""

    path: Path
    sha256: str
    _loaded: LoadedBeats | None = None

    def load(self) -> LoadedBeats:
        if self._loaded is None:
            from asdcli.frontend.beats import load_beats

            self._loaded = load_beats(self.path)
        return self._loaded


def _finetune_stage(
    cfg: RunConfig, train: list[Clip], extra: list[Clip], ckpt: RunCheckpoint, runner: StageRunner
) -> tuple[Path, Stage]:
    """Fine-tune into RUN_DIR/finetune on the train clips and, as ``asd finetune`` picks them
    (--use-clean, --noise-mix), the supplemental ones. A run started with the same key resumes
    after its last finished epoch; one of another key (options, clips, checkpoint) is removed
    first (its files only: anything else in the folder stays)."""
    from asdcli.finetune.labels import training_data
    from asdcli.finetune.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
    from asdcli.finetune.resume import listed, recorded_option_changes
    from asdcli.finetune.run_dir import ADAPTER_DIR, HEAD_FILE, RUN_FILE

    ft = cfg.finetune_config
    assert ft is not None
    out = cfg.finetune_dir
    data = training_data([(cfg.data_root, [*train, *extra])], use_clean=ft.use_clean, noise_mix=ft.noise_mix,
                         merge_machines=False)  # fmt: skip
    inputs = {
        "checkpoint": ckpt.sha256,
        "options": ft.key(),
        "clips": files_fingerprint([c.path for c in [*data.clips, *data.noise]]),
    }

    def work(stage: Stage) -> tuple[list[Path], dict[str, Any]]:
        from asdcli.finetune.loop import finetune

        if not stage.started_with_same_key():
            changes = recorded_option_changes(out, ft)
            removed = remove_finetune_files(out)
            if removed:
                why = f": it was made with {listed(changes)}" if changes else " with other options or clips"
                runner.say(f"Removed {removed} file(s) of an earlier fine-tuning run from {out}{why}.")
        else:  # same key: keep the resume state, rewrite the final files if one was deleted or changed
            remove_own_files([out / RUN_FILE])
        remove_own_files([stage.record_path.with_suffix(".started")])  # the sidecar of earlier versions
        stage.mark_started()
        finetune(data, ft, out, resume=True, console=runner.console, loaded=ckpt.load())
        return [
            out / ADAPTER_DIR / ADAPTER_WEIGHTS,
            out / ADAPTER_DIR / ADAPTER_CONFIG,
            out / HEAD_FILE,
            out / RUN_FILE,
        ], {}

    stage = runner.run("finetune", inputs, f"LoRA fine-tuning, {ft.epochs} epoch(s), labels={ft.labels} -> {out}",
                       work)  # fmt: skip
    return out, stage


def _embed_stage(cfg: RunConfig, clips: list[Clip], durations: list[float], adapter: Path | None, upstream: str,
                 ckpt: RunCheckpoint, runner: StageRunner) -> tuple[Path, Path, Stage]:  # fmt: skip
    """Embed train and test clips into RUN_DIR/embeddings/{train,test}.npz."""
    out = cfg.run_dir / "embeddings"
    train_path, test_path = out / "train.npz", out / "test.npz"
    ecfg = cfg.embed
    inputs = {**embed_inputs(clips, ecfg, ckpt.sha256), "finetune": upstream}

    def work(stage: Stage) -> tuple[list[Path], dict[str, Any]]:
        emb = embed_to_file(
            clips,
            ecfg,
            {train_path: "train", test_path: "test"},
            runner.console,
            parts_in=(out, ".parts-"),
            durations=durations,
            loaded=ckpt.load(),
        )
        return [train_path, test_path], {"clips": len(emb), "dim": emb.dim}

    what = "fine-tuned embeddings" if adapter else "frozen BEATs embeddings (mean-pooled)"
    stage = runner.run("embed", inputs, f"{what} of {len(clips)} clips -> {out}", work)
    return train_path, test_path, stage


def _bank_stage(cfg: RunConfig, train_path: Path, embed: Stage, runner: StageRunner) -> Stage:
    """Fit one bank per machine/section into RUN_DIR/banks; banks the stage wrote before for
    machines no longer in the data are removed (other files in the folder stay)."""
    out = cfg.run_dir / "banks"
    inputs = {"embeddings": embed.outputs_id(), "bank": cfg.bank.key()}

    def work(stage: Stage) -> tuple[list[Path], dict[str, Any]]:
        from asdcli.artifacts import load_embeddings
        from asdcli.backend.bank import fit_banks, save_banks

        earlier = stage.recorded_outputs()
        banks = fit_banks(load_embeddings(train_path), cfg.bank, what=str(train_path))
        written = save_banks(out, banks)
        remove_own_files([p for p in earlier if p not in written])
        return written, {"banks": len(banks)}

    return runner.run("fit-bank", inputs, f"KNN banks per machine/section -> {out}", work)


def _score_stage(cfg: RunConfig, test_path: Path, embed: Stage, banks: Stage, runner: StageRunner) -> Path:
    out = cfg.run_dir / "submission"
    inputs = score_inputs(embed, banks)  # `asd fuse` checks a run's submission/ against its banks/ by it

    def work(stage: Stage) -> tuple[list[Path], dict[str, Any]]:
        from asdcli.artifacts import load_embeddings
        from asdcli.backend.bank import load_bank
        from asdcli.backend.score import write_submission

        loaded = [load_bank(p) for p in banks.recorded_outputs()]
        paths = write_submission(loaded, load_embeddings(test_path), out, str(test_path))
        return paths, {"files": len(paths)}

    runner.run("score", inputs, f"anomaly scores and decisions -> {out}", work)
    return out


def _report_stage(cfg: RunConfig, submission: Path, runner: StageRunner) -> SystemReport:
    """Evaluate the submission against the test names' labels into report.csv (always redone:
    it takes milliseconds)."""
    from asdcli.artifacts import write_text_atomic
    from asdcli.evaluate.ground_truth import load_ground_truth
    from asdcli.evaluate.render import render_text
    from asdcli.evaluate.report import bank_thresholds, evaluate_submission
    from asdcli.evaluate.report_command import default_name

    out = cfg.run_dir / "report.csv"
    runner.say(f": official metrics -> {out}", runner.header("report"))
    report = evaluate_submission(
        submission,
        load_ground_truth(None, cfg.data_root),
        name=default_name(str(submission)),
        thresholds=bank_thresholds(cfg.run_dir / "banks"),
        skip_unlabelled=True,
    )
    for warning in report.warnings:
        runner.say(warning, "[yellow]Warning:[/] ")
    write_text_atomic(out, render_text([report], "csv"))
    if cfg.plots:
        from asdcli.evaluate.plots import write_plots  # matplotlib is slow to import; only when asked

        paths = write_plots([report], cfg.run_dir / "plots")
        runner.say(f"Wrote {len(paths)} plots to {cfg.run_dir / 'plots'}")
    runner.ran.append("report")
    return report


def run_pipeline(cfg: RunConfig, console: Console | None = None) -> RunResult:
    """Run finetune -> embed -> fit-bank -> score -> report under ``cfg.run_dir`` (locked meanwhile).

    Stages whose record matches are skipped. Without test clips the run stops after the banks;
    without labels on the test clips (eval data) it stops after the submission folder.
    """
    from accelerate import PartialState

    if PartialState().num_processes > 1:
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
        adapter, finetuned = _finetune_stage(cfg, train, extra, ckpt, runner)
        upstream = finetuned.outputs_id()
    else:
        runner.say(": off (--no-finetune), frozen BEATs", runner.header("finetune"))
    train_path, test_path, embed = _embed_stage(cfg, [*train, *test], durations, adapter, upstream, ckpt, runner)
    banks = _bank_stage(cfg, train_path, embed, runner)
    submission = report = None
    if test:
        submission = _score_stage(cfg, test_path, embed, banks, runner)
        labelled = _labelled_machines(test)
        if labelled:  # dev machines; eval machines next to them are left out of the report
            report = _report_stage(cfg, submission, runner)
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
