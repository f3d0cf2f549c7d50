"""Hugging Face BERT safetensors -> `models.text.bert.Bert` params, by a declarative mapping table.

Each row is (checkpoint name, our param path, transform); "{i}" rows repeat per layer. Loading
refuses a checkpoint with missing or unexpected tensors, or with a shape our model does not expect,
and names them, so a silently half-loaded tower is impossible.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import meta
from safetensors.numpy import load_file

from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import Bert

TRANSFORMS = {
    "identity": lambda array: array,
    "transpose": lambda array: array.T,  # torch Linear weight [out, in] -> flax Dense kernel [in, out]
}

GLOBAL_TABLE = (
    ("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding", "identity"),
    ("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", "identity"),
    ("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding", "identity"),
    ("embeddings.LayerNorm.weight", "embeddings/norm/scale", "identity"),
    ("embeddings.LayerNorm.bias", "embeddings/norm/bias", "identity"),
    ("pooler.dense.weight", "pooler/kernel", "transpose"),
    ("pooler.dense.bias", "pooler/bias", "identity"),
)

LAYER_TABLE = (
    ("encoder.layer.{i}.attention.self.query.weight", "encoder/layer_{i}/attention/query/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.query.bias", "encoder/layer_{i}/attention/query/bias", "identity"),
    ("encoder.layer.{i}.attention.self.key.weight", "encoder/layer_{i}/attention/key/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.key.bias", "encoder/layer_{i}/attention/key/bias", "identity"),
    ("encoder.layer.{i}.attention.self.value.weight", "encoder/layer_{i}/attention/value/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.value.bias", "encoder/layer_{i}/attention/value/bias", "identity"),
    ("encoder.layer.{i}.attention.output.dense.weight", "encoder/layer_{i}/attention/out/kernel", "transpose"),
    ("encoder.layer.{i}.attention.output.dense.bias", "encoder/layer_{i}/attention/out/bias", "identity"),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder/layer_{i}/attention_norm/scale", "identity"),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder/layer_{i}/attention_norm/bias", "identity"),
    ("encoder.layer.{i}.intermediate.dense.weight", "encoder/layer_{i}/intermediate/kernel", "transpose"),
    ("encoder.layer.{i}.intermediate.dense.bias", "encoder/layer_{i}/intermediate/bias", "identity"),
    ("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel", "transpose"),
    ("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias", "identity"),
    ("encoder.layer.{i}.output.LayerNorm.weight", "encoder/layer_{i}/output_norm/scale", "identity"),
    ("encoder.layer.{i}.output.LayerNorm.bias", "encoder/layer_{i}/output_norm/bias", "identity"),
)

# A buffer, not a parameter: HF saves it in some checkpoints (MiniLM's included).
DEFAULT_IGNORE = ("embeddings.position_ids",)


def mapping(depth: int) -> dict[str, tuple[str, str]]:
    """Checkpoint name -> (our param path, transform) for a `depth`-layer BERT."""
    table = {name: (path, transform) for name, path, transform in GLOBAL_TABLE}
    for i in range(depth):
        table.update({name.format(i=i): (path.format(i=i), transform) for name, path, transform in LAYER_TABLE})
    return table


def expected_shapes(config: Bert) -> dict[str, tuple[int, ...]]:
    """Our param path -> shape, from an abstract init (no memory or compute spent)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(lambda: config.init(jax.random.key(0), ids, ids)["params"])
    flat = traverse_util.flatten_dict(meta.unbox(abstract), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def load_hf_bert(path: str | Path, config: Bert, ignore: Iterable[str] = DEFAULT_IGNORE) -> dict:
    """Read a HF BERT `model.safetensors` into the params tree of `config` (apply with {"params": ...}).

    Raises UserError naming missing, unexpected or mis-shaped tensors; `ignore` lists checkpoint names to skip.
    """
    if not Path(path).is_file():
        raise UserError(f"no safetensors checkpoint at {path}")
    tensors = load_file(str(path))
    table = mapping(config.depth)
    ignored = set(ignore)
    missing = sorted(set(table) - set(tensors))
    unexpected = sorted(set(tensors) - set(table) - ignored)
    if missing or unexpected:
        raise UserError(f"{path} does not match a {config.depth}-layer BERT: missing {missing or 'none'}; "
                        f"unexpected {unexpected or 'none'}")
    shapes = expected_shapes(config)
    unmapped = sorted(set(shapes) - {our_path for our_path, _ in table.values()})
    if unmapped:
        raise ValueError(f"the hf_bert table does not cover these Bert params: {unmapped}")
    params, mismatched = {}, []
    for name, (our_path, transform) in table.items():
        array = TRANSFORMS[transform](tensors[name])
        if array.shape != shapes[our_path]:
            mismatched.append(f"{name} {array.shape} -> {our_path} {shapes[our_path]}")
        params[our_path] = jnp.asarray(array, config.param_dtype)
    if mismatched:
        raise UserError(f"{path} has shapes this Bert config does not expect: {'; '.join(mismatched)}")
    return traverse_util.unflatten_dict(params, sep="/")
