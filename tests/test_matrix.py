"""The mismatch matrix: every consumer of an artifact, fed two parts that differ in exactly one
way, refuses with one `Error:` line naming the difference or gives the result the README documents.

Parts are made once per module through the real CLI (tiny random BEATs, the fan machine of the
synthetic dataset, 1 s clips). A cell that makes no sense is left out with a comment saying why.

Consumers x differences (R refused naming the field, A allowed as documented, = the code path of
the row above, not a cell of its own, - no such cell):

                    ckpt adapter kind layers secs channel prec window machine section domain bank-opts run-bank
  score --bank EMB   R    R      R    R      R    R       R    R(1)   A(2)    =       -      -         -
  score --banks EMB  R    R      R    R      R    R       R    =      R(3)    =       -      -         R
  score CLIPS        R/A  R/A    A    A      A    A       R/A  -      R       R       -      -         -
  score --window     R    R      =    =      =    =       R    R(4)   R       R       -      -         -
  enrol EMB/CLIPS    R/A  R/A    R/A  R/A    R/A  R/A     R/A  A(5)   R       R       R      -         -
  watch              R/A  R      A    =      A    A       A    R(4)   A(6)    A(6)    -      -         -
  fuse               A    -      -    -      -    -       -    -      -       -       -      A         R
  report             -    -      -    -      -    -       -    -      R       -       -      R(7)      R
  package            -    -      A(8) A(8)   -    -       -    -      A(9)    -       -      -         R

R/A: refused when the override (--checkpoint, --adapter, --precision) or the embeddings differ from
the bank, allowed (the bank's own front end, scores equal to scoring its embeddings) otherwise.
(1) windowed embeddings are not clips; (2) other rows counted, --all scores them; (3) no bank for
the machine; (4) a --window of another length than the bank's clips, the hop is free; (5) clips
of a bank of windows are embedded window by window; (6) one `Warning: Skipped` line, not logged;
(7) another --banks folder is checked against the run's records and the decision files
(tests/test_trust_gaps.py); (8) the meta YAML's method follows the banks' record;
(9) packs the --data machines and names the files left out. Left out: `-` cells where the
consumer has no such input or option (fuse and report read score CSVs, which record no front
end: their front ends are checked through the run folder's records, the run-bank column);
the domain column plays no part in a score (only enrol reads it, and fit-bank's domain norms);
`--precision` with enrol/watch (no such option: they use the bank's); ONNX vs torch (below).
Fixed by the commit that added this matrix: score --window x prec (--precision was ignored),
watch x ckpt/adapter (every file skipped with a warning, now one error at start), package x
kind/layers (the method said head embeddings / the last layer), score --bank EMB x window (a
"Scored N" line came before the refusal).
"""

from __future__ import annotations

import csv
import functools
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_checks import asd, assert_error, assert_ok

BANK = "bank_fan_section_00.npz"
SCORES = "anomaly_score_fan_section_00_test.csv"
# one difference each, relative to the part named first: (reference variant, other variant, field named)
FRONTEND_CELLS = {
    "checkpoint": ("base", "checkpoint", "checkpoint_sha256"),
    "adapter": ("head_a", "head_b", "adapter_sha256"),
    "embedding kind": ("head_a", "pooled_a", "embedding"),
    "layers": ("base", "layers", "layers"),
    "clip seconds": ("base", "seconds", "clip_seconds"),
    "channel": ("base", "channel", "channel"),
    "precision": ("base", "int8", "precision"),
}
# ONNX vs torch front end: not a cell here, as one `asd export` costs ~20 s on 2 cores;
# tests/test_deploy.py checks that `asd embed --onnx` of an fp32 export records the torch fp32 front
# end (so it scores against torch banks, as the README says) and that `--int8` records its own
# precision ("int8-onnxruntime"), which the precision cell above shows is refused.
# --embedding-dim 64 = the tiny backbone's width: head and pooled vectors have one dimension, so
# only the front-end record can tell them apart
FINETUNE = ("--epochs", 1, "--seconds", 1, "--embedding-dim", 64, "--batch-size", 8, "--device", "cpu")


class Parts:
    """The artifacts of the matrix, each made on first use and kept for the module."""

    def __init__(self, root: Path, data: Path, checkpoint: Path) -> None:
        self.root, self.data, self.checkpoint = root, data, checkpoint
        self.fan = data / "fan"

    @functools.cached_property
    def other_checkpoint(self) -> Path:
        from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

        return make_tiny_checkpoint(self.root / "other.pt", seed=1)  # same cfg, other weights

    @functools.cache  # noqa: B019 (one Parts per module)
    def adapter(self, seed: int) -> Path:
        """A fine-tuning run folder; seed 0's is the `asd run` folder's (one fine-tuning less)."""
        if seed == 0:
            return self.run / "finetune"
        out = self.root / f"ft{seed}"
        assert_ok(asd("finetune", self.data, "--checkpoint", self.checkpoint, "--out", out, *FINETUNE, "--seed", seed))
        return out

    def embed_args(self, variant: str) -> list[object]:
        ckpt: list[object] = ["--checkpoint", self.checkpoint]
        if variant == "checkpoint":
            return ["--checkpoint", self.other_checkpoint]
        if variant in ("head_a", "head_b", "pooled_a"):
            kind = ["--embedding", "pooled"] if variant == "pooled_a" else []
            return [*ckpt, "--adapter", self.adapter(1 if variant == "head_b" else 0), *kind]
        options: dict[str, list[object]] = {
            "base": [],
            "layers": ["--layers", "1"],
            "seconds": ["--seconds", 2],
            "channel": ["--channel", 0],
            "int8": ["--precision", "int8"],
            "window": ["--window", 1],
        }
        return [*ckpt, *options[variant]]

    def embed(self, variant: str, clips: Path, out: Path) -> Path:
        """``clips`` (a folder or one clip) embedded with the variant's front end into ``out``."""
        args = self.embed_args(variant)
        seconds = [] if "--seconds" in args else ["--seconds", 1]
        assert_ok(asd("embed", clips, "--out", out, *seconds, *args, "--device", "cpu"))
        return out

    @functools.cache  # noqa: B019
    def embeddings(self, variant: str) -> Path:
        """Train and test clips of fan embedded with the variant's front end."""
        return self.embed(variant, self.fan, self.root / f"emb_{variant}.npz")

    @functools.cache  # noqa: B019
    def banks(self, variant: str, *options: object) -> Path:
        out = self.root / f"banks_{variant}{''.join(map(str, options))}"
        assert_ok(asd("fit-bank", self.embeddings(variant), "--out-dir", out, *options))
        return out

    def bank(self, variant: str) -> Path:
        return self.banks(variant) / BANK

    @functools.cache  # noqa: B019
    def system(self, variant: str, *options: object) -> str:
        """SUBMISSION_DIR:BANKS_DIR of the variant's banks scoring its own test embeddings."""
        banks = self.banks(variant, *options)
        sub = Path(f"{banks}_submission")
        assert_ok(asd("score", "--banks", banks, "--embeddings", self.embeddings(variant), "--submission-dir", sub))
        return f"{sub}:{banks}"

    @functools.cached_property
    def run(self) -> Path:
        """An `asd run` folder: fine-tuned (seed 0), pooled embeddings."""
        out = self.root / "run"
        assert_ok(asd("run", self.data, "--checkpoint", self.checkpoint, *FINETUNE, "--seed", 0,
                      "--embedding", "pooled", "--out", out))  # fmt: skip
        return out

    def run_with_bank_of(self, variant: str, name: str) -> Path:
        """A copy of the run folder whose fan bank was replaced by the variant's (scores left as they were)."""
        copy = self.root / name
        shutil.copytree(self.run, copy)
        shutil.copy(self.bank(variant), copy / "banks" / BANK)
        return copy

    @functools.cached_property
    def other_section_clip(self) -> Path:
        """A fan test clip renamed to section 01 (the bank is of section 00)."""
        clip = sorted((self.fan / "test").glob("section_00_*_normal_*.wav"))[0]
        folder = self.root / "section01" / "fan" / "test"
        folder.mkdir(parents=True)
        return Path(shutil.copy(clip, folder / clip.name.replace("section_00", "section_01")))


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Parts:
    data = tmp_path_factory.mktemp("matrix-data") / "dev"
    for machine in ("fan", "gearbox"):  # two machines: fine-tuning classifies machines
        shutil.copytree(synth_root / machine, data / machine)
    return Parts(tmp_path_factory.mktemp("matrix"), data, tiny_checkpoint)


def _scores(stdout: str) -> dict[str, float]:
    rows = (line.rsplit(",", 1) for line in stdout.splitlines() if line)
    return {name: float(value) for name, value in rows}


def _score_file(path: Path) -> dict[str, float]:
    return _scores(path.read_text())


# --- score --bank BANK --embeddings EMB, score --banks DIR --embeddings EMB, enrol BANK EMB.npz --------


@pytest.mark.parametrize("cell", FRONTEND_CELLS)
def test_score_bank_refuses_embeddings_of_another_front_end(parts: Parts, cell: str, tmp_path: Path) -> None:
    ref, other, field = FRONTEND_CELLS[cell]
    result = asd("score", "--bank", parts.bank(ref), "--embeddings", parts.embeddings(other))
    assert_error(result, field, "different front ends")


@pytest.mark.parametrize("cell", FRONTEND_CELLS)
def test_score_banks_refuses_embeddings_of_another_front_end(parts: Parts, cell: str, tmp_path: Path) -> None:
    ref, other, field = FRONTEND_CELLS[cell]
    sub = tmp_path / "sub"
    result = asd("score", "--banks", parts.banks(ref), "--embeddings", parts.embeddings(other), "--submission-dir", sub)
    assert_error(result, field, "different front ends")
    assert not sub.exists()


@pytest.mark.parametrize("cell", FRONTEND_CELLS)
def test_enrol_refuses_embeddings_of_another_front_end(parts: Parts, cell: str, tmp_path: Path) -> None:
    ref, other, field = FRONTEND_CELLS[cell]
    out = tmp_path / "new.npz"
    result = asd("enrol", parts.bank(ref), parts.embeddings(other), "--domain", "target", "--out", out)
    assert_error(result, field, "different front ends")
    assert not out.exists()


def test_enrol_restandardize_refuses_train_embeddings_of_another_front_end(parts: Parts, tmp_path: Path) -> None:
    clip = sorted((parts.fan / "test").glob("*target*normal*.wav"))[0]
    result = asd("enrol", parts.bank("base"), clip, "--domain", "target", "--out", tmp_path / "new.npz",
                 "--restandardize", "--train", parts.embeddings("checkpoint"))  # fmt: skip
    assert_error(result, "checkpoint_sha256")


# --- score on the fly: clips embedded with the bank's own front end, or an override ------------------


@pytest.mark.parametrize(
    ("variant", "override", "field"),
    [
        ("base", "checkpoint", "checkpoint_sha256"),
        ("head_a", "adapter", "adapter_sha256"),
        ("base", "precision", "precision"),
    ],
)
@pytest.mark.parametrize("consumer", ["score", "score --window", "enrol", "watch"])
def test_on_the_fly_override_of_another_front_end_is_refused(
    parts: Parts, variant: str, override: str, field: str, consumer: str, tmp_path: Path
) -> None:
    flag = {
        "checkpoint": ["--checkpoint", parts.other_checkpoint],
        "adapter": ["--adapter", parts.adapter(1)],
        "precision": ["--precision", "int8"],
    }[override]
    if override == "precision" and consumer in ("enrol", "watch"):
        pytest.skip("enrol and watch take no --precision: they embed with the bank's own precision")
    bank = parts.bank(variant)
    test = parts.fan / "test"
    if consumer == "score":
        result = asd("score", "--bank", bank, test, *flag)
    elif consumer == "score --window":
        result = asd("score", "--bank", bank, test, "--window", 1, *flag)
    elif consumer == "enrol":
        clip = sorted(test.glob("*target*normal*.wav"))[0]
        result = asd("enrol", bank, clip, "--domain", "target", "--out", tmp_path / "new.npz", *flag)
    else:
        incoming = tmp_path / "incoming" / "fan"
        incoming.mkdir(parents=True)
        shutil.copy(sorted(test.glob("*.wav"))[0], incoming)
        result = asd("watch", incoming.parent, "--bank", bank, "--once", "--poll", 0.1, *flag)
    assert_error(result, field, "different front ends")


@pytest.mark.parametrize("variant", ["base", "layers", "seconds", "channel", "int8", "head_a", "pooled_a"])
def test_score_on_the_fly_embeds_like_the_bank(parts: Parts, variant: str, tmp_path: Path) -> None:
    """Allowed as documented: clips are embedded with the bank's own front end (layers, clip length,
    channel, precision, adapter and embedding kind from its record), so scoring clips gives the
    scores of scoring the variant's own test embeddings."""
    from asdcli.artifacts import load_embeddings

    from_clips = asd("score", "--bank", parts.bank(variant), parts.fan / "test", "--device", "cpu")
    # The variant's embeddings of the same clips in the same batches: in other batches another
    # CPU's kernels may round differently, and one flipped int8 rounding moves a score far more.
    test_embeddings = parts.embed(variant, parts.fan / "test", tmp_path / "test.npz")
    frontend = load_embeddings(parts.embeddings(variant)).meta["frontend"]  # the bank's rows'
    assert load_embeddings(test_embeddings).meta["frontend"] == frontend
    from_file = asd("score", "--bank", parts.bank(variant), "--embeddings", test_embeddings)
    assert_ok(from_clips)
    assert_ok(from_file)
    a, b = _scores(from_clips.stdout), _scores(from_file.stdout)
    assert a.keys() == b.keys() and len(a) == 12
    # the same forward on the same clips in the same batches: the scores as printed
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5


# --- window / hop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("consumer", ["score", "watch"])
def test_window_of_another_length_than_the_bank_clips_is_refused(parts: Parts, consumer: str, tmp_path: Path) -> None:
    test = parts.fan / "test"
    if consumer == "score":
        result = asd("score", "--bank", parts.bank("base"), test, "--window", 0.5)
    else:
        result = asd("watch", test, "--bank", parts.bank("base"), "--once", "--window", 0.5)
    assert_error(result, "--window")


def test_windowed_bank_refuses_embeddings_of_whole_clips_only_through_the_record(parts: Parts) -> None:
    """A bank of 1 s windows and embeddings of 1 s clips have one front end: allowed (the README: a
    window must be as long as the bank's clips; the hop is free)."""
    result = asd("score", "--bank", parts.bank("window"), parts.fan / "test", "--window", 1, "--hop", 0.5)
    assert_ok(result)
    assert len(_scores(result.stdout)) == 12


def test_windowed_embeddings_are_not_scored_as_clips(parts: Parts) -> None:
    result = asd("score", "--bank", parts.bank("base"), "--embeddings", parts.embeddings("window"))
    assert_error(result, "--window")


# --- machine, section, domain -----------------------------------------------------------------------


@pytest.mark.parametrize("consumer", ["score", "score --window", "enrol"])
@pytest.mark.parametrize("differs", ["machine", "section"])
def test_clip_of_another_machine_or_section_is_refused(
    parts: Parts, consumer: str, differs: str, tmp_path: Path
) -> None:
    if differs == "machine":
        clip = sorted((parts.data / "gearbox" / "train").glob("*.wav"))[0]
        needle = "gearbox"
    else:
        clip = parts.other_section_clip
        needle = "section 01"
    bank = parts.bank("base")
    if consumer == "enrol":
        result = asd("enrol", bank, clip, "--domain", "source", "--out", tmp_path / "new.npz")
    else:
        window = ["--window", 1] if consumer == "score --window" else []
        result = asd("score", "--bank", bank, clip, *window)
    assert_error(result, needle)


@pytest.mark.parametrize("differs", ["machine", "section"])
def test_watch_skips_a_file_of_another_machine_or_section(parts: Parts, differs: str, tmp_path: Path) -> None:
    """Documented: a file whose DCASE layout's machine or name's section is not its bank's is one
    `Warning: Skipped` line and not logged (`--bank` scores every file, still refusing those)."""
    if differs == "machine":
        clip, folder, needle = sorted((parts.data / "gearbox" / "test").glob("*.wav"))[0], "gearbox/test", "gearbox"
    else:
        clip, folder, needle = parts.other_section_clip, "fan", "section 01"
    incoming = tmp_path / "incoming" / folder
    incoming.mkdir(parents=True)
    shutil.copy(clip, incoming)
    log = tmp_path / "log.csv"
    result = asd("watch", tmp_path / "incoming", "--bank", parts.bank("base"), "--once", "--poll", 0.1, "--log", log)
    assert result.exit_code == 0, result.output
    assert "Warning: Skipped" in result.stderr and needle in result.stderr, result.stderr
    assert "Scored 0 file(s)" in result.stderr
    assert not log.exists() or len(log.read_text().splitlines()) <= 1  # at most the header


@pytest.mark.parametrize("all_rows", [False, True])
def test_score_embeddings_of_other_machines(parts: Parts, all_rows: bool) -> None:
    """Documented: with --embeddings the test rows of the bank's machine/section are scored and the
    other rows counted on stderr; --all scores every row (same front end: the run's)."""
    emb = parts.run / "embeddings" / "test.npz"
    result = asd("score", "--bank", parts.run / "banks" / BANK, "--embeddings", emb, *(["--all"] if all_rows else []))
    assert result.exit_code == 0, result.output
    names = _scores(result.stdout)
    assert len(names) == (24 if all_rows else 12)
    fan = {p.name for p in (parts.fan / "test").glob("*.wav")}
    assert all_rows or (set(names) == fan and "skipped 12 other rows" in result.stderr)


def test_enrol_refuses_a_clip_named_as_the_other_domain(parts: Parts, tmp_path: Path) -> None:
    clip = sorted((parts.fan / "test").glob("*source*normal*.wav"))[0]
    result = asd("enrol", parts.bank("base"), clip, "--domain", "target", "--out", tmp_path / "new.npz")
    assert_error(result, "--domain")


def test_score_banks_refuses_embeddings_without_a_bank_of_their_machine(parts: Parts, tmp_path: Path) -> None:
    # the run's fan bank only (outside the run folder), its test embeddings of fan and gearbox
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(parts.run / "banks" / BANK, banks)
    sub = tmp_path / "sub"
    result = asd("score", "--banks", banks, "--embeddings", parts.run / "embeddings" / "test.npz",
                 "--submission-dir", sub)  # fmt: skip
    assert_error(result, "No bank for gearbox")


# --- fuse: systems of other front ends or bank options are what it is for -------------------------------


@pytest.mark.parametrize(
    ("other", "options"),
    [("checkpoint", ()), ("base", ("--k", 2)), ("base", ("--score-norm", "density", "--density-k", 3))],
)
def test_fuse_of_systems_that_differ_is_the_documented_mean(
    parts: Parts, other: str, options: tuple[object, ...], tmp_path: Path
) -> None:
    """Allowed: per section, each system's scores standardized by its own bank's leave-one-out
    mean/std, then averaged (README `asd fuse`)."""
    from asdcli.backend.bank import load_bank

    systems = [parts.system("base"), parts.system(other, *options)]
    out = tmp_path / "fused"
    assert_ok(asd("fuse", *systems, "--out", out))
    expected: dict[str, float] = {}
    for spec in systems:
        sub, banks = spec.rsplit(":", 1)
        mean, std = load_bank(Path(banks) / BANK).loo_stats or (0.0, 1.0)
        for name, value in _score_file(Path(sub) / SCORES).items():
            expected[name] = expected.get(name, 0.0) + (value - mean) / std / 2
    fused = _score_file(out / SCORES)
    assert fused.keys() == expected.keys()
    assert max(abs(fused[k] - expected[k]) for k in fused) < 1e-5 * max(1.0, max(map(abs, fused.values())))


def test_fuse_refuses_systems_of_other_bank_train_clips(parts: Parts, tmp_path: Path) -> None:
    # the windowed bank's rows are windows of the same clips under the same names: same clip set;
    # a bank enrolled with one more clip has other train clips
    clip = sorted((parts.fan / "test").glob("*target*normal*.wav"))[0]
    banks = tmp_path / "banks"
    banks.mkdir()
    assert_ok(asd("enrol", parts.bank("base"), clip, "--domain", "target", "--out", banks / BANK))
    sub = parts.system("base").rsplit(":", 1)[0]
    result = asd("fuse", parts.system("base"), f"{sub}:{banks}", "--out", tmp_path / "fused")
    assert_error(result, "train clips")


# --- run folders: a bank replaced by one of another front end -----------------------------------------


@pytest.mark.parametrize("consumer", ["fuse", "report", "package", "score --banks"])
def test_run_folder_with_a_bank_of_another_front_end_is_refused(parts: Parts, consumer: str, tmp_path: Path) -> None:
    # the run's banks are of pooled vectors of its adapter: the replacement differs in the kind only
    run = parts.run_with_bank_of("head_a", f"run_{consumer.replace(' ', '_')}")
    if consumer == "fuse":
        result = asd("fuse", run, parts.run, "--out", tmp_path / "fused")
    elif consumer == "report":
        result = asd("report", run / "submission", "--data", parts.data, "--format", "csv")
    elif consumer == "package":
        result = asd("package", run, "--team", "Doe_ACME", "--system", 1, "--out", tmp_path / "pkg")
    else:
        result = asd("score", "--banks", run / "banks", "--embeddings", run / "embeddings" / "test.npz",
                     "--submission-dir", tmp_path / "sub")  # fmt: skip
    assert_error(result, BANK)


def test_report_with_other_banks_is_refused(parts: Parts) -> None:
    """A run's submission read with `--banks` of another folder: the run's fit-bank record names the
    bank files that scored it, so other banks are refused by name (a copy of RUN/banks passes;
    these are of fan only, the run's of fan and gearbox)."""
    banks = parts.banks("base", "--k", 2)
    result = asd("report", parts.run / "submission", "--data", parts.data, "--banks", banks, "--format", "csv")
    assert_error(result, str(banks), "gearbox section 00")
    both = parts.root / "banks_both"
    shutil.copytree(parts.run / "banks", both)
    shutil.copy(banks / BANK, both / BANK)
    result = asd("report", parts.run / "submission", "--data", parts.data, "--banks", both, "--format", "csv")
    assert_error(result, str(both / BANK), "fit-bank")


def test_package_meta_says_which_embedding_the_banks_hold(parts: Parts, tmp_path: Path) -> None:
    """The meta YAML's method is the banks' front end: the run's banks hold pooled vectors of the
    fine-tuned backbone, not head embeddings."""
    result = asd("package", parts.run, "--team", "Doe_ACME", "--system", 1, "--out", tmp_path / "pkg")
    assert_ok(result)
    text = (tmp_path / "pkg" / "task2" / "Doe_ACME_task2_1" / "Doe_ACME_task2_1.meta.yaml").read_text()
    method = next(line for line in text.splitlines() if "machine_learning_method" in line)
    assert "pooled" in method and "head embeddings" not in method, method


def test_package_method_follows_the_record_of_layers_and_full_fine_tuning() -> None:
    from asdcli.evaluate.system_meta import method

    assert "mean over tokens of the last layer" in method({"layers": "last"}, None)
    assert "layers 1,2, concatenated" in method({"layers": "1,2"}, None)
    assert "fine-tuned with LoRA" in method({"embedding": "head"}, {"config": {}})
    full = method({"embedding": "head"}, {"config": {"full_finetune": True}})
    assert "fully fine-tuned" in full and "LoRA" not in full and "head embeddings" in full


# --- enrol and watch embed with the bank's own front end ---------------------------------------------


@pytest.mark.parametrize("variant", ["layers", "seconds", "channel", "int8", "pooled_a", "window"])
def test_enrol_embeds_like_the_bank(parts: Parts, variant: str, tmp_path: Path) -> None:
    """Allowed as documented: clips are embedded with the bank's own front end (window by window
    for a bank of windows), so the enrolled vector is the variant's embedding of that clip."""
    from asdcli.artifacts import load_embeddings
    from asdcli.backend import knn
    from asdcli.backend.bank import load_bank

    clip = sorted((parts.fan / "test").glob("*target*normal*.wav"))[0]
    out = tmp_path / "new.npz"
    assert_ok(asd("enrol", parts.bank(variant), clip, "--domain", "target", "--out", out, "--device", "cpu"))
    bank, grown = load_bank(parts.bank(variant)), load_bank(out)
    # The clip embedded alone, as enrol embeds it: in a batch of others another CPU's kernels may
    # round differently, and one flipped int8 rounding moves a vector far more than float32 rounding.
    emb = load_embeddings(parts.embed(variant, clip, tmp_path / "alone.npz"))
    rows = emb.vectors[emb.filenames == clip.name]
    assert len(grown) == len(bank) + len(rows) and list(grown.filenames[len(bank) :]) == [clip.name] * len(rows)
    expected = knn.prepare(rows, bank.mean, bank.std)
    # unit vectors of the same forward: float32 rounding only
    np.testing.assert_allclose(grown.vectors[len(bank) :], expected, atol=1e-5, rtol=0)
    batched = load_embeddings(parts.embeddings(variant))  # the variant's front end made the bank's rows
    assert (batched.meta["frontend"], batched.dim) == (emb.meta["frontend"], emb.dim)


@pytest.mark.parametrize("variant", ["base", "seconds", "channel", "int8", "pooled_a"])
def test_watch_scores_like_score(parts: Parts, variant: str, tmp_path: Path) -> None:
    """Allowed as documented: a file is scored with the bank's own front end in windows of the
    bank's clip length; a 1 s file is one (zero-padded) window, scored as `asd score` scores it."""
    clip = sorted((parts.fan / "test").glob("*.wav"))[0]
    incoming = tmp_path / "incoming" / "fan"
    incoming.mkdir(parents=True)
    shutil.copy(clip, incoming)
    log = tmp_path / "log.csv"
    watched = asd("watch", incoming.parent, "--bank", parts.bank(variant), "--once", "--poll", 0.1, "--log", log,
                  "--device", "cpu")  # fmt: skip
    assert watched.exit_code == 0, watched.output
    scored = asd("score", "--bank", parts.bank(variant), clip, "--device", "cpu")
    assert_ok(scored)
    rows = list(csv.DictReader(io.StringIO(log.read_text())))
    assert len(rows) == 1 and rows[0]["windows"] == "1"
    assert float(rows[0]["score"]) == pytest.approx(_scores(scored.stdout)[clip.name], abs=1e-5)


# --- report and package against --data of other machines ---------------------------------------------


@pytest.mark.parametrize("consumer", ["report", "package"])
def test_data_of_other_machines_than_the_submission(parts: Parts, consumer: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts.fan, data / "fan")  # the run scored fan and gearbox
    if consumer == "report":
        result = asd("report", parts.run / "submission", "--data", data, "--format", "csv")
    else:
        result = asd(
            "package", parts.run, "--team", "Doe_ACME", "--system", 1, "--out", tmp_path / "pkg", "--data", data
        )
        # documented: packs the --data machines and says which files of the submission it left out
        assert_ok(result)
        import zipfile

        names = zipfile.ZipFile(tmp_path / "pkg" / "Doe_ACME_task2_1.zip").namelist()
        assert any("anomaly_score_fan_" in n for n in names) and not any("gearbox" in n for n in names)
        assert "anomaly_score_gearbox_section_00_test.csv" in result.output
        return
    assert_error(result, "gearbox section 00", "no ground truth")


# --- the bank's recorded checkpoint moved: same bytes elsewhere are the same front end ----------------


@pytest.fixture(scope="module")
def moved_bank(parts: Parts) -> tuple[Path, Path]:
    """A bank made with a copy of the checkpoint that was moved afterwards, and its new path."""
    old, new = parts.root / "moving.pt", parts.root / "moved.pt"
    shutil.copy(parts.checkpoint, old)
    emb, banks = parts.root / "emb_moving.npz", parts.root / "banks_moving"
    assert_ok(asd("embed", parts.fan / "train", "--checkpoint", old, "--seconds", 1, "--out", emb, "--device", "cpu"))
    assert_ok(asd("fit-bank", emb, "--out-dir", banks))
    old.rename(new)
    return banks / BANK, new


@pytest.mark.parametrize("consumer", ["score", "score --window", "enrol", "watch"])
@pytest.mark.parametrize("given", [False, True])
def test_moved_checkpoint(
    parts: Parts, moved_bank: tuple[Path, Path], consumer: str, given: bool, tmp_path: Path
) -> None:
    """Documented: a moved checkpoint is an error saying to pass --checkpoint; passed, its SHA-256
    equals the bank's record and the clips are scored (or enrolled)."""
    bank, new = moved_bank
    flag: list[object] = ["--checkpoint", new] if given else []
    clip = sorted((parts.fan / "test").glob("*target*normal*.wav"))[0]
    if consumer == "enrol":
        result = asd("enrol", bank, clip, "--domain", "target", "--out", tmp_path / "new.npz", *flag)
    elif consumer == "watch":
        incoming = tmp_path / "incoming" / "fan"
        incoming.mkdir(parents=True)
        shutil.copy(clip, incoming)
        result = asd("watch", incoming.parent, "--bank", bank, "--once", "--poll", 0.1, *flag)
    else:
        window = ["--window", 1] if consumer == "score --window" else []
        result = asd("score", "--bank", bank, clip, *window, *flag)
    if not given:
        assert_error(result, "does not exist any more", "--checkpoint")
    elif consumer == "watch":
        assert result.exit_code == 0 and "Scored 1 file(s)" in result.stderr, result.output
    else:
        assert_ok(result)
