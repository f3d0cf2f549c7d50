"""`vlm_jax.cli.bench`: `vlm profile` checks its workload against `bench.profile.WORKLOADS`, and `vlm bench` its
sections and presets, before any work."""

import pytest

from vlm_jax import cli


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlm: error:"), lines
    return lines[0]


def test_profile_rejects_an_unknown_workload(capsys):
    assert cli.main(["profile", "resnet"]) == 2
    assert "unknown workload 'resnet'" in _one_error_line(capsys)


@pytest.mark.parametrize("flag, value", [("--sections", "peak,warp"), ("--sections", ","),
                                         ("--presets", "small,huge"), ("--presets", "")])
def test_bench_rejects_an_unknown_section_or_preset(capsys, tmp_path, flag, value):
    assert cli.main(["bench", "--quick", flag, value, "--out", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert f"{flag} takes a comma-separated subset of" in line and line.endswith(f"got {value!r}"), line
    assert not list(tmp_path.iterdir())  # nothing ran
