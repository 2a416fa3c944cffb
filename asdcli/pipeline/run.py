"""`asd run`: the whole challenge pipeline in one run folder, through the same stage functions.

RUN_DIR/
  finetune/            adapter/, head.safetensors, run.json, state/   (absent with --no-finetune)
  embeddings/          train.npz, test.npz
  banks/               bank_<machine>_section_<SS>.npz
  submission/          anomaly_score_*.csv, decision_result_*.csv     (the challenge folder)
  report.csv           official metrics (when the test clips are labelled)
  stages/<name>.json   what each finished stage was made from

A stage is skipped when its record matches the key of its inputs and options and its outputs
exist; otherwise it runs again. Every artifact is written atomically and a stage's record only
after its outputs, so an interrupted run never looks finished and the next run continues
(fine-tuning resumes after its last finished epoch, embedding after its last saved part of
EMBED_CHUNK clips).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from asdcli.artifacts import cached_sha256
from asdcli.data.audio import probe_clips
from asdcli.backend.bank import BankConfig
from asdcli.data.dataset import Clip, discover_clips, require_field
from asdcli.frontend.embed import EmbedConfig, embed_inputs, embed_to_file
from asdcli.errors import ConfigError, DataError
from asdcli.finetune.config import FinetuneConfig
from asdcli.pipeline.stages import Stage, files_fingerprint, make_stage

if TYPE_CHECKING:
    from asdcli.evaluate.report import SystemReport

STAGE_NAMES = ("finetune", "embed", "fit-bank", "score", "report")


@dataclass(frozen=True)
class RunConfig:
    """One `asd run`: where the data and the run folder are, and each stage's options.

    ``finetune`` None means --no-finetune: embeddings are the frozen backbone's mean-pooled
    tokens. ``seconds`` must equal the finetune config's, so both stages see the same clips.
    """

    data_root: Path
    run_dir: Path
    checkpoint: Path
    finetune: FinetuneConfig | None
    bank: BankConfig = BankConfig()
    embedding: str | None = None  # with fine-tuning: "head" (default) or "pooled"
    seconds: float = 10.0
    device: str = "auto"
    channel: int | None = None
    batch_size: int = 8  # clips per forward pass when embedding
    num_workers: int = 0  # DataLoader processes reading audio while embedding
    plots: bool = False

    def __post_init__(self) -> None:
        if self.finetune is None and self.embedding is not None:
            raise ConfigError("--embedding chooses the fine-tuned model's vector; drop it with --no-finetune.")
        if self.finetune is not None and self.finetune.seconds != self.seconds:
            raise ConfigError("Fine-tuning and embedding must use the same --seconds.")


@dataclass(frozen=True)
class RunResult:
    """What `asd run` produced: the submission folder, the report (None without labels), and
    which stages ran or were up to date."""

    run_dir: Path
    submission_dir: Path | None
    report: SystemReport | None
    ran: tuple[str, ...]
    skipped: tuple[str, ...]


class _Stages:
    """Runs stages in order, skipping fresh ones, and remembers what happened."""

    def __init__(self, console: Console | None) -> None:
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

    def run(self, stage: Stage, what: str, work: Callable[[], dict[str, Any] | None]) -> None:
        head = self.header(stage.name)
        if stage.is_fresh():
            self.say(f": up to date, skipped ({what})", head)
            self.skipped.append(stage.name)
            return
        self.say(f": {what}", head)
        start = time.perf_counter()
        details = work()
        stage.mark_done({"seconds": round(time.perf_counter() - start, 3), **(details or {})})
        self.ran.append(stage.name)
        self.say(f": done in {time.perf_counter() - start:.1f} s", head)


def _clips(data_root: Path) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """(train, test, noise) clips under ``data_root``; no train clips is a DataError."""
    clips = discover_clips([data_root], splits={"train", "test", "supplemental"})
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    noise = [c for c in clips if c.kind == "noise"]
    if not train:
        raise DataError(f"{data_root} holds no train clips (DATA/<machine>/train/*.wav); "
                        "point asd run at a dataset root.")
    for field in ("machine", "section"):
        require_field(train, field, "asd run")
    machines_with_train = {c.machine for c in train}
    orphans = sorted({c.machine for c in test} - machines_with_train)
    if orphans:
        raise DataError(f"Machine(s) {', '.join(orphans)} under {data_root} have test clips but no train clips; "
                        "add their train/ folder or remove them.")
    return train, test, noise


def _finetune_stage(cfg: RunConfig, train: list[Clip], noise: list[Clip], ckpt_sha: str, stages: _Stages) -> Path:
    """Fine-tune into RUN_DIR/finetune (resuming a run interrupted with the same key)."""
    assert cfg.finetune is not None
    out = cfg.run_dir / "finetune"
    ft = cfg.finetune
    used_noise = noise if ft.noise_mix else []
    # where and how fast it runs does not change the result: another --device or --workers is no reason to retrain
    options = {k: v for k, v in ft.to_dict().items() if k not in ("checkpoint", "device", "num_workers")}
    inputs = {"checkpoint": ckpt_sha, "options": options,
              "clips": files_fingerprint([c.path for c in [*train, *used_noise]])}
    stage = make_stage(cfg.run_dir, "finetune", inputs, [out / "run.json", out / "head.safetensors"])
    started = stage.record_path.with_suffix(".started")

    def work() -> dict[str, Any]:
        from asdcli.artifacts import write_text_atomic
        from asdcli.finetune.loop import finetune

        same_run = started.is_file() and started.read_text(encoding="utf-8").strip() == stage.key
        if out.exists() and not same_run:  # made with other options or clips: start over
            shutil.rmtree(out)
        write_text_atomic(started, stage.key + "\n")
        finetune(train, ft, out, noise_clips=used_noise, resume=True, console=stages.console)
        return {}

    stages.run(stage, f"LoRA fine-tuning, {ft.epochs} epoch(s), labels={ft.labels} -> {out}", work)
    return out


def _embed_stage(cfg: RunConfig, clips: list[Clip], durations: list[float], adapter: Path | None, ckpt_sha: str,
                 stages: _Stages) -> tuple[Path, Path, str]:  # fmt: skip
    """Embed train and test clips into RUN_DIR/embeddings/{train,test}.npz; returns them and the stage key."""
    out = cfg.run_dir / "embeddings"
    train_path, test_path = out / "train.npz", out / "test.npz"
    ecfg = EmbedConfig(checkpoint=cfg.checkpoint, adapter=adapter, embedding=cfg.embedding,
                       batch_size=cfg.batch_size, device=cfg.device, seconds=cfg.seconds, channel=cfg.channel,
                       num_workers=cfg.num_workers)
    stage = make_stage(cfg.run_dir, "embed", embed_inputs(clips, ecfg, ckpt_sha), [train_path, test_path])

    def work() -> dict[str, Any]:
        emb = embed_to_file(clips, ecfg, {train_path: "train", test_path: "test"}, stages.console,
                            parts_in=(out, ".parts-"), durations=durations)
        return {"clips": len(emb), "dim": emb.dim}

    what = "fine-tuned embeddings" if adapter else "frozen BEATs embeddings (mean-pooled)"
    stages.run(stage, f"{what} of {len(clips)} clips -> {out}", work)
    return train_path, test_path, stage.key


def _bank_stage(cfg: RunConfig, train_path: Path, embed_key: str, stages: _Stages) -> tuple[Path, str]:
    out = cfg.run_dir / "banks"
    inputs = {"embeddings": embed_key, "bank": dataclasses.asdict(cfg.bank)}
    stage = make_stage(cfg.run_dir, "fit-bank", inputs, [out])

    def work() -> dict[str, Any]:
        from asdcli.artifacts import load_embeddings
        from asdcli.backend.bank import fit_banks, save_banks

        banks = fit_banks(load_embeddings(train_path), cfg.bank, what=str(train_path))
        written = set(save_banks(out, banks))
        for stale in out.glob("bank_*.npz"):  # machines of an earlier dataset
            if stale not in written:
                stale.unlink()
        return {"banks": len(banks)}

    stages.run(stage, f"KNN banks per machine/section -> {out}", work)
    return out, stage.key


def _score_stage(cfg: RunConfig, test_path: Path, keys: Sequence[str], stages: _Stages) -> Path:
    out = cfg.run_dir / "submission"
    stage = make_stage(cfg.run_dir, "score", {"inputs": list(keys)}, [out])

    def work() -> dict[str, Any]:
        from asdcli.artifacts import load_embeddings
        from asdcli.backend.bank import load_banks
        from asdcli.backend.score import write_submission

        paths = write_submission(load_banks(cfg.run_dir / "banks"), load_embeddings(test_path), out, str(test_path))
        return {"files": len(paths)}

    stages.run(stage, f"anomaly scores and decisions -> {out}", work)
    return out


def _report_stage(cfg: RunConfig, submission: Path, stages: _Stages) -> SystemReport:
    """Evaluate the submission against the test names' labels into report.csv (always redone:
    it takes milliseconds)."""
    from asdcli.artifacts import write_text_atomic
    from asdcli.evaluate.ground_truth import load_ground_truth
    from asdcli.evaluate.render import render_text
    from asdcli.evaluate.report import bank_thresholds, evaluate_submission
    from asdcli.evaluate.report_command import default_name

    out = cfg.run_dir / "report.csv"
    stages.say(f": official metrics -> {out}", stages.header("report"))
    report = evaluate_submission(submission, load_ground_truth(None, cfg.data_root),
                                 name=default_name(str(submission)), thresholds=bank_thresholds(cfg.run_dir / "banks"),
                                 skip_unlabelled=True)
    for warning in report.warnings:
        stages.say(warning, "[yellow]Warning:[/] ")
    write_text_atomic(out, render_text([report], "csv"))
    if cfg.plots:
        from asdcli.evaluate.plots import write_plots  # matplotlib is slow to import; only when asked

        paths = write_plots([report], cfg.run_dir / "plots")
        stages.say(f"Wrote {len(paths)} plots to {cfg.run_dir / 'plots'}")
    stages.ran.append("report")
    return report


def run_pipeline(cfg: RunConfig, console: Console | None = None) -> RunResult:
    """Run finetune -> embed -> fit-bank -> score -> report under ``cfg.run_dir``.

    Stages whose recorded key matches are skipped. Without test clips the run stops after the
    banks; without labels on the test clips (eval data) it stops after the submission folder.
    """
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise ConfigError("asd run is single-process; under accelerate launch run `asd finetune` and `asd embed` "
                          "instead, then fit-bank/score on one process.")
    train, test, noise = _clips(cfg.data_root)
    durations = probe_clips([*train, *test], cfg.channel)  # a bad test clip fails now, not after fine-tuning
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(console)
    ckpt_sha = cached_sha256(cfg.checkpoint)
    n_machines = len({c.machine for c in train})
    stages.say(f"Run folder {cfg.run_dir}: {len(train)} train and {len(test)} test clips of {n_machines} machine(s) "
               f"under {cfg.data_root}.")
    adapter = None
    if cfg.finetune is not None:
        adapter = _finetune_stage(cfg, train, noise, ckpt_sha, stages)
    else:
        stages.say(": off (--no-finetune), frozen BEATs", stages.header("finetune"))
    train_path, test_path, embed_key = _embed_stage(cfg, [*train, *test], durations, adapter, ckpt_sha, stages)
    banks, bank_key = _bank_stage(cfg, train_path, embed_key, stages)
    submission = report = None
    if test:
        submission = _score_stage(cfg, test_path, [embed_key, bank_key], stages)
        labelled = {c.machine for c in test if c.label and c.domain}
        if labelled:  # dev machines; eval machines next to them are left out of the report
            report = _report_stage(cfg, submission, stages)
        unlabelled = sorted({c.machine for c in test} - labelled)
        if unlabelled:
            stages.say(f"No labels in the test file names of {', '.join(unlabelled)} (eval data), so no report for "
                       f"them: their files in {submission} are the challenge submission; pack them with "
                       f"`asd package {cfg.run_dir} --data EVAL_ROOT --team NAME --system N --out DIR`.")
    else:
        stages.say(f"No test clips under {cfg.data_root}: banks are in {banks}; score later with `asd score --banks`.")
    return RunResult(cfg.run_dir, submission, report, tuple(stages.ran), tuple(stages.skipped))


def show_report(report: SystemReport, console: Console) -> None:
    """The compact summary on ``console`` (stderr), terminal or not; the full table is report.csv."""
    from asdcli.evaluate.render import run_summary

    for line in run_summary(report):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
