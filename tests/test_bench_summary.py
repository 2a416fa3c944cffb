"""bench/summarize.py turns hand-made benchmark JSON into one Markdown table (no benchmark is run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SUMMARIZE = Path(__file__).resolve().parents[1] / "bench" / "summarize.py"

MACHINE = {
    "cpu": "Test CPU 9000", "cores": 8, "usable_cores": 2, "memory_gib": 31.4, "os": "Linux x86_64",
    "python": "3.11.7", "torch": "2.4.0", "numpy": "2.0.0", "scikit-learn": "1.5.0",
    "date": "2025-01-02 03:04 UTC", "quick": False,
}  # fmt: skip
EMBED = {
    "benchmark": "embed", "torch": "2.4.0", "threads": 2, "batch_size": 2, "iters": 3, "clip_seconds": 10.0,
    "gflop_per_clip": 98.7, "batch_seconds": [7.0, 6.9, 7.1], "s_per_clip": 3.45, "clips_per_s": 1 / 3.45,
    "model_gflops": 28.6, "matmul_gflops": 110.0, "matmul_gflops_before": 100.0, "matmul_gflops_after": 110.0,
    "pct_of_peak": 26.0, "peak_rss_mib": 812.0,
}  # fmt: skip
KNN = {
    "benchmark": "knn", "queries": 1000, "dim": 768, "k": 1, "sizes": [1000, 100000, 1000000],
    "rows": [
        {"bank": 1000, "ours_qps": 8000.0, "ours_peak_mib": 2.0, "sklearn_qps": 4000.0, "sklearn_peak_mib": 8.0,
         "speedup": 2.0, "max_abs_diff": 6e-8},
        {"bank": 100000, "ours_qps": 450.0, "ours_peak_mib": 64.0, "sklearn_qps": None, "sklearn_peak_mib": None,
         "speedup": None, "max_abs_diff": None},
    ],
}  # fmt: skip
FINETUNE = {
    "benchmark": "finetune", "seconds": 2.0, "batch_size": 2, "steps": 3, "rank": 64, "mixed_precision": "no",
    "device": "cpu", "step_ratio": 0.8, "memory_ratio": 0.25,
    "modes": {
        "lora": {"mode": "lora", "trainable": 4328192, "step_s": 8.0, "peak_mib": 500.0, "device": "cpu"},
        "full": {"mode": "full", "trainable": 91101040, "step_s": 10.0, "peak_mib": 2000.0, "device": "cpu"},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def summarize() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_summarize", SUMMARIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder: Path, **files: dict) -> Path:
    for name, data in files.items():
        (folder / f"{name}.json").write_text(json.dumps(data))
    return folder


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_one_table_with_every_benchmark(summarize: ModuleType, tmp_path: Path) -> None:
    text = summarize.summarize(write(tmp_path, machine=MACHINE, embed=EMBED, knn=KNN, finetune=FINETUNE))
    first = text.splitlines()[0]
    assert first.startswith("Machine: Test CPU 9000, 8 cores (2 usable)")
    assert "torch 2.4.0" in first and "2025-01-02" in first and "QUICK" not in first
    rows = table_rows(text)
    assert len({len(r) for r in rows}) == 1 and rows[0][0] == "benchmark" and set(rows[1]) == {"---"}
    body = {(r[0].split()[0], r[1].split(",")[0]): r for r in rows[2:]}
    embed = next(r for k, r in body.items() if k[0] == "embed")
    assert "0.290 clips/s" in embed[2] and "110 GFLOP/s" in embed[3] and "26 %" in embed[4] and "812" in embed[5]
    knn_1e3 = body[("KNN", "bank 1e3 x 768")]
    assert knn_1e3[2] == "8,000 queries/s" and "4,000" in knn_1e3[3] and knn_1e3[4] == "2.00x faster"
    assert knn_1e3[5:] == ["2.00", "8.00", "0.25x"]
    knn_1e5 = body[("KNN", "bank 1e5 x 768")]
    assert "skipped" in knn_1e5[3] and knn_1e5[4] == "-" and knn_1e5[7] == "-"
    assert body[("KNN", "bank 1e6 x 768")][2] == "not finished"  # listed in sizes, no row: the run died
    ft = next(r for k, r in body.items() if k[0] == "fine-tune")
    assert ft[2] == "LoRA 8.00 s/step" and ft[3] == "full 10.0 s/step" and "0.80x" in ft[4]
    assert ft[5:] == ["500", "2,000", "0.25x"]


def test_a_cuda_embed_run_says_so(summarize: ModuleType, tmp_path: Path) -> None:
    cuda = EMBED | {"device": "cuda", "device_name": "NVIDIA H200", "autocast": "bf16", "batch_size": 16,
                    "peak_memory_kind": "CUDA max allocated"}  # fmt: skip
    embed = table_rows(summarize.summarize(write(tmp_path, machine=MACHINE, embed=cuda)))[2]
    assert embed[0] == "embed (`asd embed` forward, cuda)"
    assert "batch 16, NVIDIA H200, bf16 autocast" in embed[1] and "threads" not in embed[1]
    assert embed[5] == "812 (CUDA max allocated)"


def test_missing_or_broken_json_gives_a_failed_row(summarize: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, machine={**MACHINE, "quick": True}, embed=EMBED)
    (tmp_path / "finetune.json").write_text("{not json")
    text = summarize.summarize(tmp_path)
    assert "QUICK" in text.splitlines()[0]
    rows = table_rows(text)[2:]
    assert [r[0].split()[0] for r in rows] == ["embed", "KNN", "fine-tune"]
    assert "not run" in rows[1][1] and "not run" in rows[2][1]


def test_cli_prints_the_table(summarize: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path, machine=MACHINE, embed=EMBED, knn=KNN, finetune=FINETUNE)
    assert summarize.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("Machine: Test CPU 9000")


@pytest.mark.parametrize(("m", "label"), [(1000, "1e3"), (1_000_000, "1e6"), (50_000, "50,000")])
def test_bank_label(summarize: ModuleType, m: int, label: str) -> None:
    assert summarize.bank_label(m) == label
