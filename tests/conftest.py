"""Shared fixtures. The tiny moving_shapes set is built once per session, through the CLI."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

# Test shapes are tiny, so XLA's compile time dominates; its backend optimisations are not worth it here.
# Set before anything imports jax (pytest imports this file first).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

REPO = Path(__file__).resolve().parent.parent


def run_vlm(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m vlm_jax ARGS` as a user would."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "vlm_jax", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"vlm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The real `tiny` moving_shapes build (576 clips, 16 frames at 64 px)."""
    return build_dataset(tmp_path_factory.mktemp("data"), "--size", "tiny")


def build_dataset(data_dir: Path, *flags: str) -> Path:
    """`vlm data build moving_shapes FLAGS` into data_dir; returns the built data set's path."""
    result = run_vlm("data", "build", "moving_shapes", "--data_dir", str(data_dir), *flags)
    return Path(json.loads(result.stdout[result.stdout.index("\n{") + 1:])["path"])


def data_dir_of(dataset: Path) -> Path:
    """The data_dir a built data set lives in: <data_dir>/moving_shapes/<config>/<version>."""
    return dataset.parent.parent.parent


@pytest.fixture
def small_size(monkeypatch):
    # 130 train clips are enough to run the generator in two worker processes.
    from vlm_jax.data.moving_shapes_tfds import SIZES
    monkeypatch.setitem(SIZES, "tiny", {"train": 130, "validation": 8, "test": 8, "test_novel": 8})


def array_records(path: Path) -> dict[str, bytes]:
    """A built data set's ArrayRecord files by name, to compare two builds byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if ".array_record" in p.name}


# `vlm train` overrides that shrink the tiny preset until a step compiles in seconds: the same code paths
# (every pretraining loss, audio, BERT, ViViT, cross-attention fusion), one layer each, 4 frames of 32 px.
MICRO = ("data.num_frames=4", "data.image_size=32", "data.max_text_len=16", "train.batch_size=8",
         "model.video.vivit.depth=1", "model.video.vivit.variant=joint", "model.text.bert.depth=1",
         "model.audio.audio_transformer.depth=1", "train.log_every=1", "train.eval_every=0",
         "eval.max_batches=1", "eval.splits=('test',)", "checkpoint.every_steps=0")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for every `vlm` run of the session, shared by its xdist workers and never the
    user's own: a program one worker compiled is read by the other, and a later run of a program skips its
    compile, as a user's resumed or repeated run does (the micro model's programs, which many test files
    train, compile once per session)."""
    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is a folder of the session's
        session_dir = session_dir.parent
    cache = session_dir / "xla_cache"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("VLM_COMPILATION_CACHE")
    os.environ["VLM_COMPILATION_CACHE"] = str(cache)
    yield
    if previous is None:
        os.environ.pop("VLM_COMPILATION_CACHE")
    else:
        os.environ["VLM_COMPILATION_CACHE"] = previous


@functools.lru_cache
def towers_of(config: str) -> dict[str, str | None]:
    """The encoder each family of a config (`FILE:preset`, relative to the repository) chooses."""
    from vlm_jax import config as config_lib
    loaded = config_lib.load(str(REPO / config))
    return {family: loaded.model[family].name for family in ("video", "text", "audio")}


def chosen_towers_only(overrides: Sequence[str], config: str = "configs/pretrain.py:tiny") -> list[str]:
    """`overrides` less the options of towers that neither `config` nor they choose (an option of an
    encoder a config does not choose is an error): base overrides can size every tiny-preset tower."""
    chosen = dict(towers_of(config))
    for override in overrides:
        key, _, value = override.partition("=")
        family = key.removeprefix("model.").removesuffix(".name")
        if key == f"model.{family}.name" and family in chosen:
            chosen[family] = value

    from vlm_jax import config as config_lib
    return [o for o in overrides if (option := config_lib.encoder_option(o)) is None or option[1] == chosen[option[0]]]


def micro(*overrides: str, config: str = "configs/pretrain.py:tiny") -> list[str]:
    """MICRO, then `overrides`, for the towers `config` and they choose."""
    return chosen_towers_only([*MICRO, *overrides], config)


def train_args(dataset: Path, workdir: Path, *overrides: str, config: str = "configs/pretrain.py:tiny") -> list[str]:
    """`vlm train` arguments for the micro model on the session's tiny data set."""
    return ["train", "--config", config, "--workdir", str(workdir), f"--config.data.data_dir={data_dir_of(dataset)}",
            *(f"--config.{o}" for o in micro(*overrides, config=config))]


def train_losses(workdir: Path, key: str = "train/loss") -> dict[int, float]:
    """step -> the logged value of `key` in workdir/metrics.jsonl (later lines win, as after a resume)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            out[record["step"]] = record[key]
    return out


# Files that hold the longest runs go first, so that with `pytest -n 2 --dist loadfile` (scripts/test.sh) the
# many short files fill the other worker meanwhile instead of leaving two long files for the end.
LONGEST_FIRST = ("tests/train/test_train_parallel.py", "tests/run/test_loop.py", "tests/apps/test_apps_cli.py",
                 "tests/apps/test_kinetics.py", "tests/train/test_ladder_overfit.py",
                 "tests/train/test_ladder_time_and_sound.py", "tests/run/test_checkpoint_io.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.fspath).relative_to(REPO).as_posix(), len(rank)))
