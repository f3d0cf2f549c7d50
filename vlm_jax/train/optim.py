"""The optimizer: AdamW with warmup + cosine decay, global-norm clipping, gradient accumulation,
frozen modules and per-module learning-rate multipliers, all from the `optim` config block.

The chain, per optimizer update:

1. frozen parameters' gradients are set to zero (so they do not count towards the clipping norm);
2. `clip_by_global_norm(clip_norm)` over the remaining gradients;
3. `optax.multi_transform`: each learning-rate group runs its own AdamW with the base schedule scaled
   by its multiplier; frozen parameters run `optax.set_to_zero()`, which keeps no moments, so a frozen
   tower costs no optimizer memory;
4. with `grad_accum_steps = k > 1`, all of the above sits inside `optax.MultiSteps`: k micro-steps
   average their gradients and only every k-th call updates the parameters (the others return zero
   updates). The schedule therefore counts *optimizer updates*, so `total_steps` and `warmup_steps`
   are in updates, not micro-steps.

Parameter paths are "/"-joined dict keys, e.g. "video_encoder/blocks_0/attention/query/kernel"; a
leading "params" component (a whole `variables` dict) is ignored when matching. A prefix matches a
path when it equals the path or a "/"-boundary prefix of it ("video" does not match "video_encoder").
`frozen` and `lr_multipliers` entries that match no parameter raise UserError (a typo would silently
train everything). When a path matches several multiplier prefixes, the longest one wins.

Weight decay (decoupled, scaled by the learning rate as in AdamW) applies to a parameter iff it has
at least 2 dimensions and its name is not `bias` or `scale`. So kernels, token embedding tables and
learned position tables are decayed (as in BERT/HF); biases, LayerNorm/GroupNorm/BatchNorm scales,
CLS tokens, modality tags and the contrastive temperature (`log_scale`, 0-D) are not. The name rule
matters for scanned (stacked) layers, where a bias has shape [layers, features].
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import optax

from vlm_jax.errors import UserError

FROZEN = "frozen"
NO_DECAY_NAMES = frozenset({"bias", "scale"})


def default_optim_config() -> ml_collections.ConfigDict:
    """The `optim` config block. `total_steps` is in optimizer updates; the trainer usually sets it to
    `train.num_steps // grad_accum_steps`."""
    return ml_collections.ConfigDict({
        "learning_rate": 3e-4,
        "warmup_steps": 100,
        "total_steps": 10_000,
        "end_lr_ratio": 0.01,
        "weight_decay": 0.05,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-8,
        "clip_norm": 1.0,  # <= 0 turns clipping off
        "grad_accum_steps": 1,
        "frozen": [],
        "lr_multipliers": {},
    })


def schedule(config_optim: Any, multiplier: float = 1.0) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to
    `end_lr_ratio * learning_rate` at `total_steps` (constant after), all times `multiplier`."""
    c = config_optim
    peak = float(c["learning_rate"]) * multiplier
    warmup, total = int(c["warmup_steps"]), int(c["total_steps"])
    if warmup < 0 or total <= 0:
        raise UserError(f"optim.warmup_steps must be >= 0 and optim.total_steps > 0 (got {warmup}, {total})")
    if warmup >= total:
        raise UserError(f"optim.warmup_steps ({warmup}) must be smaller than optim.total_steps ({total})")
    end = peak * float(_get(c, "end_lr_ratio", 0.0))
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, decay_steps=total, alpha=end / peak if peak else 0.0)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=warmup, decay_steps=total, end_value=end)


def path_str(path: Sequence[Any]) -> str:
    """A jax key path as "a/b/c", without a leading "params" collection name."""
    text = jax.tree_util.keystr(tuple(path), simple=True, separator="/")
    return text.removeprefix("params/") if text != "params" else text


def _matches(path: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return path == prefix or path.startswith(prefix + "/")


def _get(c: Any, key: str, default: Any) -> Any:
    try:
        value = c[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def _multipliers(config_optim: Any) -> dict[str, float]:
    """`lr_multipliers` as {prefix: float}; a mapping, or a sequence of (prefix, multiplier) pairs
    (handy for command-line overrides, since an empty ConfigDict has no keys to override)."""
    raw = _get(config_optim, "lr_multipliers", {})
    items = raw.items() if isinstance(raw, Mapping) or hasattr(raw, "items") else raw
    out = {}
    for prefix, mult in items:
        mult = float(mult)
        if mult < 0:
            raise UserError(f"optim.lr_multipliers[{prefix!r}] must be >= 0 (got {mult})")
        out[str(prefix).strip("/")] = mult
    return out


def _frozen(config_optim: Any) -> list[str]:
    raw = _get(config_optim, "frozen", [])
    if isinstance(raw, str):
        raw = [raw]
    return [str(p).strip("/") for p in raw]


def _label_fn(config_optim: Any) -> Callable[[str], str]:
    frozen = _frozen(config_optim)
    multipliers = _multipliers(config_optim)

    def label(path: str) -> str:
        if any(_matches(path, p) for p in frozen):
            return FROZEN
        best = max((p for p in multipliers if _matches(path, p)), key=len, default=None)
        mult = 1.0 if best is None else multipliers[best]
        return FROZEN if mult == 0.0 else _group(mult)

    return label


def _group(mult: float) -> str:
    return f"lr*{mult!r}"


def param_labels(config_optim: Any, params: Any) -> Any:
    """The tree of group labels: "frozen" or "lr*<multiplier>" per parameter."""
    label = _label_fn(config_optim)
    return jax.tree_util.tree_map_with_path(lambda path, _: label(path_str(path)), params)


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: >= 2 dims and not named bias/scale (see the module doc)."""
    def decays(path, p) -> bool:
        name = path_str(path).rsplit("/", 1)[-1]
        return len(getattr(p, "shape", ())) >= 2 and name not in NO_DECAY_NAMES
    return jax.tree_util.tree_map_with_path(decays, params)


def _validate(config_optim: Any, params_abstract: Any) -> None:
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params_abstract)[0]]
    for key, prefixes in (("frozen", _frozen(config_optim)), ("lr_multipliers", list(_multipliers(config_optim)))):
        for prefix in prefixes:
            if not any(_matches(path, prefix) for path in paths):
                tops = sorted({path.split("/", 1)[0] for path in paths})
                raise UserError(f"optim.{key} entry {prefix!r} matches no parameter; "
                                f"top-level modules are: {', '.join(tops)}")
    if int(_get(config_optim, "grad_accum_steps", 1)) < 1:
        raise UserError(f"optim.grad_accum_steps must be >= 1 (got {config_optim['grad_accum_steps']})")


def make_optimizer(config_optim: Any, params_abstract: Any) -> optax.GradientTransformation:
    """The optimizer for parameters shaped like `params_abstract` (arrays or jax.ShapeDtypeStructs;
    only its paths and shapes are read). See the module doc for the chain."""
    c = config_optim
    _validate(c, params_abstract)
    labels = jax.tree_util.tree_leaves(param_labels(c, params_abstract))
    groups = sorted(set(labels) - {FROZEN})
    multipliers = {g: float(g.removeprefix("lr*")) for g in groups}
    wd = float(_get(c, "weight_decay", 0.0))

    transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for g in groups:
        transforms[g] = optax.adamw(schedule(c, multipliers[g]), b1=float(c["b1"]), b2=float(c["b2"]),
                                    eps=float(c["eps"]), weight_decay=wd, mask=decay_mask)
    label_tree = lambda params: param_labels(c, params)  # from the actual tree: dict vs FrozenDict agnostic

    chain = []
    if FROZEN in labels:  # zero frozen gradients first so that they do not count towards the clip norm
        chain.append(optax.masked(optax.set_to_zero(), lambda p: jax.tree.map(lambda l: l == FROZEN, label_tree(p))))
    clip = float(_get(c, "clip_norm", 0.0))
    if clip > 0:
        chain.append(optax.clip_by_global_norm(clip))
    chain.append(optax.multi_transform(transforms, label_tree))
    tx = optax.chain(*chain)

    k = int(_get(c, "grad_accum_steps", 1))
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx
