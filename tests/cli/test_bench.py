"""`vlm_jax.cli.bench`: `vlm profile` checks its workload against `bench.profile.WORKLOADS` before any work."""

from vlm_jax import cli


def test_profile_rejects_an_unknown_workload(capsys):
    assert cli.main(["profile", "resnet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlm: error:") and "unknown workload 'resnet'" in lines[0], lines
