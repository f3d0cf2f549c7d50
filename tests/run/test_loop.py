"""`vlm train` end to end on the micro model: run files, a falling loss, exact resume after a SIGTERM
(a save, then a stop) and a SIGKILL (no warning), finetuning from part of a pretraining run, one-line errors.

Every run of this file shares one persistent XLA cache, so the second and later runs of a program skip its
compile; they run in subprocesses exactly as a user would.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_vlm, train_args, train_losses

TOTAL = ("optim.total_steps=40", "optim.warmup_steps=2")  # one LR schedule for runs of different lengths


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """An uninterrupted 40-step run, checkpointing every 4 steps."""
    workdir = tmp_path_factory.mktemp("reference")
    run_vlm(*train_args(tiny_dataset, workdir, "train.num_steps=40", "checkpoint.every_steps=4", *TOTAL))
    return workdir


def test_run_writes_config_metrics_results_checkpoints_and_tensorboard(reference):
    config = json.loads((reference / "config.json").read_text())
    assert config["seed"] == 0 and config["train"]["num_steps"] == 40 and config["train"]["task"] == "pretrain"
    losses = train_losses(reference)
    assert sorted(losses) == list(range(1, 41)) and all(np.isfinite(v) for v in losses.values())
    results = json.loads((reference / "results.json").read_text())
    for key in ("test/pretrain/loss", "test/pretrain/mlm_loss", "test/retrieval/t2v_R@1", "test/retrieval/v2t_R@5",
                "train/clips_per_s", "train/steps_per_s"):
        assert key in results, key
    assert 0 <= results["test/retrieval/t2v_R@1"] <= results["test/retrieval/t2v_R@5"] <= 100
    assert results["train/clips_per_s"] > 0
    assert _saved_steps(reference) == [32, 36, 40]  # checkpoint.max_to_keep = 3
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())


def test_loss_falls(reference):
    """40 steps of the micro model on tiny data: the last steps' mean loss is well below the first steps'."""
    losses = [v for _, v in sorted(train_losses(reference).items())]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, (first, last)  # measured: 13.97 -> 12.00


def test_config_json_reproduces_the_run(tmp_path, reference):
    """`vlm train --config RUN/config.json` repeats RUN: the same losses, bit for bit."""
    run_vlm("train", "--config", str(reference / "config.json"), "--workdir", str(tmp_path),
            "--config.train.num_steps=3", "--config.eval.splits=()")
    again, expected = train_losses(tmp_path), train_losses(reference)
    assert [again[s] for s in (1, 2, 3)] == [expected[s] for s in (1, 2, 3)]


def _start(args, workdir):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = open(workdir / "stderr.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "vlm_jax", *args], stdout=subprocess.DEVNULL, stderr=log,
                            env=env, cwd=REPO)


def _saved_steps(workdir):
    """Committed checkpoint steps (a save in progress lives in a `<step>.orbax-checkpoint-tmp*` directory)."""
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _wait_for_step(process, workdir, step, timeout=300):
    """Until the run has logged `step` and committed a checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (workdir / "metrics.jsonl").exists() and max(train_losses(workdir), default=0) >= step \
                and _saved_steps(workdir):
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {(workdir / 'stderr.txt').read_text()[-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError("run too slow")


def test_sigterm_saves_where_it_stops_and_the_run_resumes_exactly(tiny_dataset, tmp_path, reference):
    """SIGTERM saves at the next step and exits 143; restarted with 12 steps, every step after the save
    equals the uninterrupted reference bit for bit."""
    args = lambda steps: train_args(tiny_dataset, tmp_path, f"train.num_steps={steps}", "checkpoint.every_steps=4",
                                    "eval.splits=()", *TOTAL)
    process = _start(args(1000), tmp_path)
    _wait_for_step(process, tmp_path, 5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, (tmp_path / "stderr.txt").read_text()[-2000:]
    restart = _saved_steps(tmp_path)[-1]
    assert restart >= 5  # saved where it stopped, not only at the last periodic save
    if restart >= 12:
        pytest.skip(f"the run passed step 12 before SIGTERM landed (saved at {restart})")
    assert _start(args(12), tmp_path).wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    expected, resumed = train_losses(reference), train_losses(tmp_path)
    assert [resumed[s] for s in range(restart + 1, 13)] == [expected[s] for s in range(restart + 1, 13)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("checkpoint/restore_s" in r and r["step"] == restart for r in records)


def _kill_during_a_save(process, workdir, timeout=300):
    """SIGKILL while an asynchronous checkpoint save of this process is being written (its temporary
    directory exists); returns whether one was caught. Only once the process has trained a step: by then
    it has cleared any temporary directory an earlier kill left behind."""
    metrics, folder, deadline = workdir / "metrics.jsonl", workdir / "checkpoints", time.monotonic() + timeout
    earlier = len(metrics.read_text().splitlines())
    trained = lambda: any("train/loss" in line for line in metrics.read_text().splitlines()[earlier:])

    def writing():
        try:
            return any(".orbax-checkpoint-tmp" in p.name for p in folder.iterdir())
        except FileNotFoundError:  # renamed or removed while listed
            return False
    while not trained():
        if time.monotonic() > deadline or process.poll() is not None:
            return False
        time.sleep(0.05)
    while time.monotonic() < deadline and process.poll() is None:
        if writing():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return True
        time.sleep(0.002)
    return False


def test_repeated_sigkills_resume_to_the_uninterrupted_result(tiny_dataset, tmp_path, reference):
    """The reference's 40 steps, SIGKILLed twice (at a seeded random step, then during an asynchronous
    save) and restarted each time: each restart resumes from the last committed save, the final loss curve
    equals the reference's bit for bit and so do the final parameters."""
    rng = np.random.default_rng(0)
    args = train_args(tiny_dataset, tmp_path, "train.num_steps=40", "checkpoint.every_steps=4", "eval.splits=()",
                      *TOTAL)
    kills = []
    for during_a_save in (False, True):
        process = _start(args, tmp_path)
        if during_a_save:
            assert _kill_during_a_save(process, tmp_path), "no save in flight was caught"
        else:
            _wait_for_step(process, tmp_path, int(rng.integers(5, 12)))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        kills.append((max(train_losses(tmp_path)), _saved_steps(tmp_path)[-1]))
    assert _start(args, tmp_path).wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "checkpoint/restore_s" in r] == [saved for _, saved in kills], kills
    assert train_losses(tmp_path) == train_losses(reference)
    like = _abstract_params(tiny_dataset)
    for a, b in zip(_leaves(checkpoint_params(reference, like)), _leaves(checkpoint_params(tmp_path, like))):
        np.testing.assert_array_equal(a, b)


def test_finetune_from_part_of_a_pretraining_run(tiny_dataset, tmp_path, reference):
    """QA finetuning initialised with only the video tower of the reference run: that tower starts equal
    to the checkpoint's; the text tower keeps its fresh initialisation."""
    import jax

    from test_steps import make_config
    from vlm_jax.run import build
    include = ("init_from.include=['video_encoder']", f"init_from.workdir={reference}")
    config = make_config(tiny_dataset, "qa", *include)
    run = build.Run(config)
    fresh = run.factory.create()
    loaded = build.load_pretrained(run, run.factory.create(), config.init_from)
    pretrained = checkpoint_params(reference, fresh.params)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(jax.device_get(loaded.params["video_encoder"]), pretrained["video_encoder"])
    assert not same(jax.device_get(fresh.params["video_encoder"]), pretrained["video_encoder"])
    assert same(jax.device_get(loaded.params["text_encoder"]), jax.device_get(fresh.params["text_encoder"]))
    assert not same(jax.device_get(loaded.params["text_encoder"]), pretrained["text_encoder"])



def test_a_run_resumes_past_a_garbled_latest_checkpoint(tiny_dataset, tmp_path, reference):
    """The reference run with its latest step (40) garbled: the run warns, moves step 40 aside, resumes
    from 36 and repeats the reference's losses exactly."""
    import shutil

    from test_checkpoint import _garble
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    _garble(workdir / "checkpoints" / "40")
    result = run_vlm(*train_args(tiny_dataset, workdir, "train.num_steps=40", "checkpoint.every_steps=4", *TOTAL))
    assert "checkpoint step 40 does not restore (checkpoint step 40 is corrupt:" in result.stderr
    assert (workdir / "checkpoints_corrupt" / "40").is_dir() and _saved_steps(workdir) == [32, 36, 40]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("checkpoint/restore_s" in r and r["step"] == 36 for r in records)
    assert sum("train/loss" in r and r["step"] == 37 for r in records) == 2  # the reference's, then the rerun's
    expected, resumed = train_losses(reference), train_losses(workdir)
    assert [resumed[s] for s in range(37, 41)] == [expected[s] for s in range(37, 41)]


def test_nonfinite_steps_are_skipped_and_counted_or_stop_the_run(tiny_dataset, tmp_path, reference):
    """The reference run continued with a NaN loss weight: with `skip` every step is counted and changes
    nothing, so the new checkpoint holds the old parameters; with `stop` the run exits 1 on one line and
    saves nothing after the fault."""
    import shutil
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    nan = ("losses.contrastive=nan", "checkpoint.every_steps=2", *TOTAL)
    run_vlm(*train_args(tiny_dataset, workdir, "train.num_steps=44", "eval.splits=()", *nan))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["step"] > 40 and "train/nonfinite" in r]
    assert [(r["step"], r["train/nonfinite"], r["train/loss"]) for r in windows] == [(s, 1, None)
                                                                                    for s in range(41, 45)]
    assert json.loads((workdir / "results.json").read_text())["train/nonfinite_steps"] == 4
    assert _saved_steps(workdir) == [40, 42, 44]
    like = _abstract_params(tiny_dataset)
    at_40, at_44 = checkpoint_params(reference, like), checkpoint_params(workdir, like)
    assert sorted(at_44) == sorted(like)
    for a, b in zip(_leaves(at_40), _leaves(at_44)):
        np.testing.assert_array_equal(a, b)

    result = run_vlm(*train_args(tiny_dataset, workdir, "train.num_steps=48", "train.on_nonfinite=stop", *nan),
                     check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message == ("vlm: error: non-finite loss, gradients or parameters at step 45; stopped as "
                       "train.on_nonfinite=stop asks, and the last checkpoint (step 44) is intact")
    assert _saved_steps(workdir) == [40, 42, 44]


@pytest.mark.slow  # a second program to compile (about a minute); the demo runs the same path
def test_qa_finetuning_run(tiny_dataset, tmp_path, reference):
    run_vlm(*train_args(tiny_dataset, tmp_path, "train.num_steps=4", "optim.warmup_steps=1",
                        f"init_from.workdir={reference}", config="configs/finetune_qa.py:tiny"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["test/qa/acc"] <= 100 and "test/qa/choice_acc" in results and "test/qa/loss" in results
    assert any(k.startswith("test/qa/acc_") for k in results)


def checkpoint_params(workdir, like):
    """The latest checkpoint's parameters of `workdir`, as numpy, for the modules of `like`."""
    from vlm_jax.train import checkpoint
    reader = checkpoint.Checkpointer(workdir)
    try:
        target = {name: checkpoint.abstract_of(tree) for name, tree in like.items()}
        return {k: _numpy(v) for k, v in reader.restore_params(None, target).items()}
    finally:
        reader.close()


def _numpy(tree):
    import jax
    return jax.tree.map(np.asarray, tree)


def _abstract_params(tiny_dataset):
    """The micro model's parameters as shapes, the target for `checkpoint_params`."""
    from test_steps import make_config
    from vlm_jax.run import build
    return build.Run(make_config(tiny_dataset)).factory.abstract().params


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


@pytest.mark.parametrize("override, message", [
    ("train.task=dance", "config key train.task must be one of"),
    ("model.fusion.name=dual", "config key losses.vtm must be 0 with model.fusion.name=dual"),
    ("mesh.shape=(2,1,1)", r"mesh.shape \(2, 1, 1\) asks for 2 devices but only 1 exist"),
])
def test_bad_config_is_a_one_line_error_before_any_work(tmp_path, override, message):
    """Exit 2 with one line, before the data set is built or anything is compiled."""
    data_dir = tmp_path / "data"
    result = run_vlm("train", "--config", "configs/pretrain.py:tiny", "--workdir", str(tmp_path / "run"),
                     f"--config.data.data_dir={data_dir}", f"--config.{override}", check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr
    assert not data_dir.exists()


def test_an_unwritable_workdir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_vlm("train", "--config", "configs/pretrain.py:tiny", "--workdir", str(blocker / "run"), check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert f"cannot write to the workdir {blocker / 'run'}: " in result.stderr
