"""The stages of `asd run`, each its inputs (the key of its record) and its work: finetune ->
embed -> fit-bank -> score -> report, run in order by :class:`StageRunner`, which skips a stage
whose record is fresh (see :mod:`asdcli.pipeline.stages`). The order and the run folder's layout
are :mod:`asdcli.pipeline.run`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from asdcli.data.names import Clip
from asdcli.frontend.embed import embed_inputs, embed_to_file
from asdcli.pipeline.cleanup import remove_finetune_files, remove_own_files
from asdcli.pipeline.run_check import score_inputs
from asdcli.pipeline.stages import Stage, files_fingerprint, stage_key

if TYPE_CHECKING:
    from asdcli.evaluate.report import SystemReport
    from asdcli.frontend.beats.checkpoint import LoadedBeats
    from asdcli.pipeline.run import RunConfig

STAGE_NAMES = ("finetune", "embed", "fit-bank", "score", "report")


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
        changed = stage.changed_outputs()  # hashes the recorded outputs once
        if changed == []:
            self.say(f": up to date, skipped ({what})", head)
            self.skipped.append(name)
            return stage
        self.say(f": {what}", head)
        if changed:  # e.g. a bank enrolled in place: say that it is about to be rewritten
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            self.say(f"{changed[0]}{more} changed since this stage wrote it (edited, replaced by `asd enrol`, or "
                     "deleted); the stage writes it again from the run's inputs: keep a copy elsewhere to keep yours.",
                     "[yellow]Notice:[/] ")  # fmt: skip
        start = time.perf_counter()
        outputs, details = work(stage)
        stage.mark_done(outputs, {"seconds": round(time.perf_counter() - start, 3), **details})
        self.ran.append(name)
        self.say(f": done in {time.perf_counter() - start:.1f} s", head)
        return stage


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


def finetune_stage(
    cfg: RunConfig, train: list[Clip], extra: list[Clip], ckpt: RunCheckpoint, runner: StageRunner
) -> tuple[Path, Stage]:
    """Fine-tune into RUN_DIR/finetune on the train clips and, as ``asd finetune`` picks them
    (--use-clean, --noise-mix), the supplemental ones. A run started with the same key resumes
    after its last finished epoch; one of another key (options, clips, checkpoint) is removed
    first (its files only: anything else in the folder stays)."""
    from asdcli.finetune.labels import training_data
    from asdcli.finetune.resume import listed, recorded_option_changes
    from asdcli.finetune.run_dir import RUN_FILE, model_files

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
        return [*model_files(out, ft.full_finetune), out / RUN_FILE], {}

    how = "full fine-tuning" if ft.full_finetune else "LoRA fine-tuning"
    stage = runner.run("finetune", inputs, f"{how}, {ft.epochs} epoch(s), labels={ft.labels} -> {out}", work)
    return out, stage


def embed_stage(cfg: RunConfig, clips: list[Clip], durations: list[float], adapter: Path | None, upstream: str,
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


def bank_stage(cfg: RunConfig, train_path: Path, embed: Stage, runner: StageRunner) -> Stage:
    """Fit one bank per machine/section into RUN_DIR/banks; banks the stage wrote before for
    machines no longer in the data are removed (other files in the folder stay)."""
    out = cfg.run_dir / "banks"
    inputs = {"embeddings": embed.outputs_id(), "bank": cfg.bank.key()}

    def work(stage: Stage) -> tuple[list[Path], dict[str, Any]]:
        from asdcli.artifacts import load_embeddings
        from asdcli.backend.bank import save_banks
        from asdcli.backend.bank_fit import fit_banks

        earlier = stage.recorded_outputs()
        banks = fit_banks(load_embeddings(train_path), cfg.bank, what=str(train_path))
        written = save_banks(out, banks)
        remove_own_files([p for p in earlier if p not in written])
        return written, {"banks": len(banks)}

    return runner.run("fit-bank", inputs, f"KNN banks per machine/section -> {out}", work)


def score_stage(cfg: RunConfig, test_path: Path, embed: Stage, banks: Stage, runner: StageRunner) -> Path:
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


def report_stage(cfg: RunConfig, submission: Path, runner: StageRunner) -> SystemReport:
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
