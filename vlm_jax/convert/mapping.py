"""Declarative checkpoint conversion: a table of (source name, our param path, transform) rows.

Every converter in this package is such a table plus, where a format needs them, hooks around it (as
MaxText's param_mapping). The same table runs both ways: `to_ours` reads a source checkpoint into our
flat params, `to_source` writes our params back in the source's names and layouts. Both refuse to
produce a partial result: missing, unexpected or mis-shaped tensors raise UserError naming them,
unless the caller lists names to ignore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util
from flax.linen import meta

from vlm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Transform:
    """A layout change and its inverse: `forward` is source -> ours, `backward` ours -> source."""
    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray], np.ndarray]


def _conv_to_flax(array: np.ndarray) -> np.ndarray:
    """torch ConvNd weight [out, in, *kernel] -> flax Conv kernel [*kernel, in, out]."""
    return np.transpose(array, (*range(2, array.ndim), 1, 0))


def _conv_to_torch(array: np.ndarray) -> np.ndarray:
    return np.transpose(array, (array.ndim - 1, array.ndim - 2, *range(array.ndim - 2)))


TRANSFORMS = {
    "identity": Transform(lambda a: a, lambda a: a),
    "transpose": Transform(lambda a: a.T, lambda a: a.T),  # torch Linear [out, in] <-> flax Dense [in, out]
    "conv": Transform(_conv_to_flax, _conv_to_torch),
    "drop_batch": Transform(lambda a: a[0], lambda a: a[None]),  # [1, ...] <-> [...]
    "drop_two": Transform(lambda a: a[0, 0], lambda a: a[None, None]),  # [1, 1, ...] <-> [...] (a CLS token)
    # old flax BatchNorm statistics (1, 1, 1, 1, C) <-> (C,)
    "flatten_stats": Transform(lambda a: a.reshape(-1), lambda a: a.reshape(1, 1, 1, 1, -1)),
}

Table = dict[str, tuple[str, str]]  # source name -> (our param path, transform name)


def expand(global_rows: Iterable[tuple[str, str, str]], layer_rows: Iterable[tuple[str, str, str]],
           depth: int) -> Table:
    """A table from rows that occur once and rows with "{i}" that repeat for each of `depth` layers."""
    table = {name: (path, transform) for name, path, transform in global_rows}
    layer_rows = tuple(layer_rows)
    for i in range(depth):
        table.update({name.format(i=i): (path.format(i=i), transform) for name, path, transform in layer_rows})
    return table


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """A nested params tree -> {"a/b/kernel": array}."""
    return traverse_util.flatten_dict(meta.unbox(dict(tree)), sep="/")


def unflatten(flat: Mapping[str, object]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def abstract_shapes(init: Callable[[], Mapping]) -> dict[str, tuple[int, ...]]:
    """Our param path -> shape, from `init` traced abstractly (no memory or compute spent)."""
    return {path: tuple(leaf.shape) for path, leaf in flatten(jax.eval_shape(init)).items()}


def _check_names(have: Iterable[str], want: Iterable[str], ignore: Iterable[str], what: str) -> None:
    have, want = set(have), set(want)
    missing = sorted(want - have)
    unexpected = sorted(have - want - set(ignore))
    if missing or unexpected:
        raise UserError(f"{what}: missing {missing or 'none'}; unexpected {unexpected or 'none'}")


def check_covers(table: Table, expected: Mapping[str, tuple[int, ...]], name: str) -> None:
    """A converter's table must map every param of our model exactly once (a bug here is ours, not the user's)."""
    ours = [path for path, _ in table.values()]
    unmapped = sorted(set(expected) - set(ours))
    repeated = sorted({p for p in ours if ours.count(p) > 1})
    stray = sorted(set(ours) - set(expected))
    if unmapped or repeated or stray:
        raise ValueError(f"the {name} table is wrong: unmapped {unmapped}, mapped twice {repeated}, "
                         f"not params {stray}")


def to_ours(tensors: Mapping[str, np.ndarray], table: Table, expected: Mapping[str, tuple[int, ...]],
            what: str, ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Source tensors -> our flat params (path -> array), every name and shape checked.

    `what` names the source in errors; `ignore` lists source names that may be present and are skipped.
    """
    _check_names(tensors, table, ignore, f"{what} does not match the model")
    params, mismatched = {}, []
    for name, (path, transform) in table.items():
        array = TRANSFORMS[transform].forward(np.asarray(tensors[name]))
        if tuple(array.shape) != tuple(expected[path]):
            mismatched.append(f"{name} {tuple(np.shape(tensors[name]))} -> {path} {tuple(expected[path])}")
        params[path] = np.ascontiguousarray(array)
    if mismatched:
        raise UserError(f"{what} has shapes the model does not expect: {'; '.join(mismatched)}")
    return params


def to_source(params: Mapping[str, np.ndarray], table: Table, what: str,
              ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Our flat params -> source tensors in the source's names and layouts (the inverse of `to_ours`)."""
    ours = {path: name for name, (path, _) in table.items()}
    _check_names(params, ours, ignore, f"{what} does not match the table")
    return {name: np.ascontiguousarray(TRANSFORMS[transform].backward(np.asarray(params[path])))
            for name, (path, transform) in table.items()}
