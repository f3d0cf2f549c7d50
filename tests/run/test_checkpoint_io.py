"""`run.checkpoint_io`: a run's checkpoint to one .safetensors / .npz file and back, bit for bit, and
onto other meshes.

One micro run (2 steps of `vlm train`, the micro model of conftest) is trained once for the module. The
re-sharding needs 8 devices, which must be set before jax starts, so it runs in a subprocess: this file
as a script (`python tests/run/test_checkpoint_io.py SOURCE SCRATCH` prints one JSON object), started
in the background as soon as the run exists, while the in-process tests (1 device) run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # run as the 8-device script: conftest is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from vlm_jax import config as config_lib
from vlm_jax.errors import UserError
from vlm_jax.run import checkpoint_io as rc
from vlm_jax.train import checkpoint as checkpoint_lib

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
# the contrastive loss only: a third of the full losses' compile time; the other modules' parameters are
# frozen, so the optimizer state holds masked parts too
OVERRIDES = (f"train.num_steps={STEPS}", "optim.warmup_steps=0", "eval.splits=()", "losses.vtm=0", "losses.mlm=0",
             "losses.mvm=0")
FSDP_LEAF = "params/video_encoder/tubelet_embedding/kernel"  # (2, 8, 8, 3, 64), "embed" on its last axis
TIMEOUT = 300


# ------------------------------------------------------------------ helpers (shared with the script)

def host_leaves(tree) -> dict[str, np.ndarray]:
    """{path name: numpy array} of a train state (PRNG keys as their key data)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[checkpoint_lib._path_name(path)] = np.asarray(jax.device_get(leaf))
    return out


def load_run(workdir: Path):
    """(Run, state, data_state) of a run directory's latest checkpoint, restored onto its config's mesh."""
    from vlm_jax.run.build import Run
    run = Run(config_lib.load(str(Path(workdir) / "config.json")))
    with checkpoint_lib.Checkpointer(workdir, async_save=False) as reader:
        state, data_state = reader.restore(None, run.factory.abstract())
    return run, state, data_state


def differences(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Names whose arrays are not bit-identical (dtype, shape and bytes), plus missing/extra names."""
    bad = sorted(set(actual) ^ set(expected))
    for name in sorted(set(actual) & set(expected)):
        a, e = actual[name], expected[name]
        if a.dtype != e.dtype or a.shape != e.shape or a.tobytes() != e.tobytes():
            bad.append(name)
    return bad


# ------------------------------------------------------------------ the 8-device script

def eight_device_checks(source: Path, scratch: Path) -> dict:
    """Reshard the 1-device run onto (8,1,1), that onto (1,8,1) and (2,2,2); report what tests assert."""
    from jax.sharding import PartitionSpec as P

    expected = host_leaves(load_run(source)[1])
    out = {"devices": jax.device_count()}
    chain = [("8x1x1", source, (8, 1, 1)), ("1x8x1", scratch / "8x1x1", (1, 8, 1)),
             ("2x2x2", scratch / "8x1x1", (2, 2, 2))]
    for name, origin, shape in chain:
        target = scratch / name
        result = rc.reshard(origin, target, shape)
        run, state, data_state = load_run(target)  # the new config's own abstract state: resumable
        abstract = run.factory.abstract()
        placed = [checkpoint_lib._path_name(p) for (p, leaf), want in zip(
            jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(abstract))
            if leaf.sharding != want.sharding]
        leaf = state.params["video_encoder"]["tubelet_embedding"]["kernel"]
        out[name] = {
            "result": [result["step"], list(result["mesh"])],
            "config_mesh": json.loads((target / "config.json").read_text())["mesh"]["shape"],
            "differences": differences(host_leaves(state), expected),
            "misplaced": placed,
            "data_state": data_state,
            "spec": [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec],
            "fsdp_in_spec": leaf.sharding.spec == P(None, None, None, None, "fsdp"),
            "shard_shape": list(leaf.addressable_shards[0].data.shape),
            "mesh": dict(run.mesh.shape),
        }
    for shape in [(3, 1, 1), (16, 1, 1)]:
        try:
            rc.reshard(source, scratch / f"bad_{shape[0]}", shape)
            out[f"bad_{shape[0]}"] = "no error"
        except UserError as error:
            out[f"bad_{shape[0]}"] = str(error)
    return out


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def source(tiny_dataset, tmp_path_factory):
    """(the micro run's workdir, the 8-device script's process, started in the background)."""
    from conftest import run_vlm, train_args
    workdir = tmp_path_factory.mktemp("source")
    run_vlm(*train_args(tiny_dataset, workdir, *OVERRIDES))
    scratch = tmp_path_factory.mktemp("reshard")
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": flags}
    process = subprocess.Popen(["timeout", str(TIMEOUT), sys.executable, __file__, str(workdir), str(scratch)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    yield workdir, process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def original(source):
    """The source run's (state as {name: numpy}, data state, checkpoint metadata)."""
    workdir, _ = source
    _, state, data_state = load_run(workdir)
    with checkpoint_lib.Checkpointer(workdir, async_save=False) as reader:
        meta = reader.metadata()
    return host_leaves(state), data_state, meta


@pytest.fixture(scope="module")
def eight(source):
    _, process = source
    stdout, stderr = process.communicate(timeout=TIMEOUT + 30)
    assert process.returncode == 0, f"the 8-device script exited {process.returncode}:\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ export and import

@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_export_then_import_is_bit_exact(source, original, tmp_path, suffix):
    workdir, _ = source
    expected, data_state, meta = original
    path = tmp_path / f"state{suffix}"
    names = rc.export(workdir, path)
    assert set(names) == set(expected)
    assert {"step", "rng"} <= set(names) and any(n.startswith("opt_state/") for n in names)
    assert names[FSDP_LEAF] == ((2, 8, 8, 3, 64), "float32")

    arrays, metadata = rc.read_file(path)
    assert differences(arrays, expected) == []
    assert metadata["step"] == STEPS and metadata["config_hash"] == meta["config_hash"]
    assert metadata["params_only"] is False and metadata["format"] == rc.FORMAT

    info = rc.import_file(path, workdir / "config.json", tmp_path / "imported")
    assert info == {"step": STEPS, "params_only": False, "arrays": len(expected)}
    assert json.loads((tmp_path / "imported" / "config.json").read_text()) == \
        json.loads((workdir / "config.json").read_text())
    _, state, restored_data_state = load_run(tmp_path / "imported")
    restored = host_leaves(state)
    assert differences(restored, expected) == []
    for name, array in expected.items():  # as the issue states it: every leaf, dtypes equal
        assert restored[name].dtype == array.dtype, name
        np.testing.assert_array_equal(restored[name], array, err_msg=name)
    assert restored_data_state == data_state and data_state is not None


def test_the_convert_command_exports_and_refuses_a_bad_mesh(source, original, tmp_path):
    from conftest import run_vlm
    workdir, _ = source
    expected, _, _ = original
    run_vlm("convert", "export", "--workdir", str(workdir), "--out", str(tmp_path / "state.npz"))
    arrays, _ = rc.read_file(tmp_path / "state.npz")
    assert differences(arrays, expected) == []
    result = run_vlm("convert", "reshard", "--workdir", str(workdir), "--out", str(tmp_path / "r"), "--mesh", "1,8",
                     check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "vlm: error: --mesh takes three comma-separated sizes (data,fsdp,tensor), got '1,8'"]


def test_params_only_export_and_import_with_a_fresh_optimizer(source, original, tmp_path):
    workdir, _ = source
    expected, _, _ = original
    path = tmp_path / "params.npz"
    names = rc.export(workdir, path, params_only=True)
    assert names and all(n.startswith("params/") for n in names)  # no batch_stats: no BatchNorm here
    assert set(names) == {n for n in expected if n.startswith("params/")}

    info = rc.import_file(path, None, tmp_path / "imported", step=7)  # the config the file carries
    assert info["params_only"] and info["step"] == 7
    run, state, data_state = load_run(tmp_path / "imported")
    with checkpoint_lib.Checkpointer(tmp_path / "imported", async_save=False) as reader:  # as init_from reads
        video = reader.restore_params(None, {"video_encoder": run.factory.abstract().params["video_encoder"]})
    assert differences(host_leaves({"params": video}), {n: a for n, a in expected.items()
                                                        if n.startswith("params/video_encoder/")}) == []
    restored = host_leaves(state)
    assert differences({n: a for n, a in restored.items() if n.startswith("params/")},
                       {n: expected[n] for n in names}) == []
    assert int(restored["step"]) == 7 and data_state is None
    # the key a fresh run of the config draws (the trained run's: steps fold the step into it)
    np.testing.assert_array_equal(restored["rng"], expected["rng"])
    moments = [a for n, a in restored.items() if n.startswith("opt_state/") and ("/mu/" in n or "/nu/" in n)]
    assert moments and all(not a.any() for a in moments)
    assert {n for n in restored} == set(expected)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_file_round_trip_keeps_every_dtype(tmp_path, suffix):
    """bfloat16 (native in safetensors), float8 and int4 (as their bits), scalars and bools, bit for bit."""
    import ml_dtypes
    rng = np.random.default_rng(0)
    arrays = {
        "a/bf16": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
        "a/f8": rng.normal(size=(4,)).astype(ml_dtypes.float8_e4m3fn),
        "a/int4": np.arange(-8, 8).astype(ml_dtypes.int4),
        "b/scalar": np.array(3, np.int32),
        "b/flags": np.array([True, False]),
        "b/f64": rng.normal(size=(2, 2)),
        "opt/lr*1.0/0/count": np.array(5, np.int32),
    }
    rc.write_file(tmp_path / f"x{suffix}", arrays, {"step": 3})
    back, metadata = rc.read_file(tmp_path / f"x{suffix}")
    assert differences(back, arrays) == [] and metadata["step"] == 3
    assert "a/bf16" in metadata["dtypes"] or suffix == ".safetensors"
    assert "a/bf16" not in metadata["dtypes"] or suffix == ".npz"


# ------------------------------------------------------------------ refusals

def test_a_file_that_is_neither_safetensors_nor_npz_is_refused(source, tmp_path):
    workdir, _ = source
    with pytest.raises(UserError, match=r"must end in \.safetensors or \.npz"):
        rc.export(workdir, tmp_path / "state.pt")
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match=r"must end in \.safetensors or \.npz"):
        rc.import_file(tmp_path / "state.ckpt", workdir / "config.json", tmp_path / "out")


def test_missing_unexpected_and_misshaped_names_are_refused(source, original, tmp_path, suffix=".safetensors"):
    workdir, _ = source
    expected, _, _ = original
    arrays = dict(expected)
    dropped = "params/contrastive/log_scale"
    del arrays[dropped]
    arrays["params/video_encoder/bogus"] = np.zeros(3, np.float32)
    arrays[FSDP_LEAF] = np.zeros((2, 8, 8, 3, 32), np.float32)
    rc.write_file(tmp_path / f"bad{suffix}", arrays, {"step": STEPS})
    with pytest.raises(UserError) as error:
        rc.import_file(tmp_path / f"bad{suffix}", workdir / "config.json", tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message
    assert f"missing {dropped}" in message and "unexpected params/video_encoder/bogus" in message
    assert f"{FSDP_LEAF} (2, 8, 8, 3, 32) float32 (want (2, 8, 8, 3, 64) float32)" in message
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_damaged_file_and_a_pickled_npz_are_refused(source, original, tmp_path):
    workdir, _ = source
    expected, _, _ = original
    path = tmp_path / "state.npz"
    rc.export(workdir, path)
    arrays, metadata = rc.read_file(path)
    arrays[FSDP_LEAF] = arrays[FSDP_LEAF].copy()
    arrays[FSDP_LEAF][0, 0, 0, 0, 0] += 1.0
    rc.write_file(tmp_path / "damaged.npz", arrays, {k: v for k, v in metadata.items() if k != "dtypes"})
    with pytest.raises(UserError, match=f"damaged.*{FSDP_LEAF}"):
        rc.import_file(tmp_path / "damaged.npz", workdir / "config.json", tmp_path / "out")

    np.savez(tmp_path / "pickled.npz", step=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="not a readable .npz file"):
        rc.read_file(tmp_path / "pickled.npz")


def test_import_into_a_run_directory_with_checkpoints_is_refused(source, tmp_path):
    workdir, _ = source
    rc.export(workdir, tmp_path / "p.safetensors", params_only=True)
    with pytest.raises(UserError, match="already has checkpoints"):
        rc.import_file(tmp_path / "p.safetensors", None, workdir)


def test_a_mesh_the_devices_cannot_form_is_refused(source, tmp_path):
    workdir, _ = source
    with pytest.raises(UserError, match=r"mesh.shape \(2, 1, 1\) asks for 2 devices"):
        rc.reshard(workdir, tmp_path / "out", (2, 1, 1))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ reshard, on 8 fake devices

@pytest.mark.parametrize("mesh, spec, shard", [
    ("8x1x1", [None, None, None, None, "fsdp"], [2, 8, 8, 3, 64]),
    ("1x8x1", [None, None, None, None, "fsdp"], [2, 8, 8, 3, 8]),
    ("2x2x2", [None, None, None, None, "fsdp"], [2, 8, 8, 3, 32]),
])
def test_reshard_is_bit_exact_and_lands_on_the_new_shardings(eight, original, mesh, spec, shard):
    _, data_state, _ = original
    report = eight[mesh]
    shape = [int(s) for s in mesh.split("x")]
    assert eight["devices"] == 8
    assert report["result"] == [STEPS, shape] and report["config_mesh"] == shape
    assert report["mesh"] == dict(zip(("data", "fsdp", "tensor"), shape))
    assert report["differences"] == []  # every leaf: dtype, shape and bytes
    assert report["misplaced"] == []  # every leaf carries the new config's sharding
    assert report["spec"] == spec and report["fsdp_in_spec"] and report["shard_shape"] == shard
    assert report["data_state"] == data_state  # one process before and after


def test_reshard_onto_a_mesh_the_devices_cannot_form_is_refused(eight):
    assert "mesh.shape (3, 1, 1)" in eight["bad_3"] and "8" in eight["bad_3"]
    assert "mesh.shape (16, 1, 1) asks for 16 devices" in eight["bad_16"]


if __name__ == "__main__":
    print(json.dumps(eight_device_checks(Path(sys.argv[1]), Path(sys.argv[2]))))
