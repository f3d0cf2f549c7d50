"""Train and eval steps on the micro model and real tiny batches, one device, in process.

Metric names and dtypes are checked abstractly (`jax.eval_shape`, no compile); values through one
compiled run per task.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import data_dir_of, micro
from vlm_jax import config as config_lib
from vlm_jax.data import pipeline
from vlm_jax.models.layers import take_rows
from vlm_jax.run import build
from vlm_jax.train import steps

TASK_CONFIGS = {"pretrain": "configs/pretrain.py:tiny", "retrieval": "configs/finetune_retrieval.py:tiny",
                "caption": "configs/finetune_caption.py:tiny", "qa": "configs/finetune_qa.py:tiny"}


def make_config(tiny_dataset, task="pretrain", *overrides):
    data_dir = data_dir_of(tiny_dataset)
    return config_lib.load(TASK_CONFIGS[task], micro(f"data.data_dir={data_dir}", *overrides))


def first_batch(run):
    return run.to_device(next(iter(pipeline.train_dataset(run.spec))))


def abstract_step(run, batch):
    """(state, metrics) shapes of one train step, traced only."""
    with run.mesh_context():
        return jax.eval_shape(run.train_step, run.factory.abstract(), batch)


@pytest.mark.parametrize("task, expected", [
    ("pretrain", {"contrastive_loss", "vtm_loss", "mlm_loss", "mvm_loss", "contrastive/t2v_acc", "vtm/neg_acc",
                  "mlm/accuracy"}),
    ("retrieval", {"contrastive_loss", "contrastive/v2t_acc", "logit_scale"}),
    ("caption", {"caption_loss", "caption/nll", "caption/accuracy"}),
    ("qa", {"qa_loss", "qa/accuracy", "choice_loss", "choice/accuracy"}),
])
def test_each_task_logs_its_losses(tiny_dataset, task, expected):
    run = build.Run(make_config(tiny_dataset, task))
    state, metrics = abstract_step(run, first_batch(run))
    assert expected | {"loss", "grad_norm", "param_norm"} <= set(metrics)
    assert all(m.shape == () and m.dtype == jnp.float32 for m in metrics.values())
    assert int(np.prod(state.step.shape)) == 1


def test_zero_weight_drops_the_loss_and_freezes_its_head(tiny_dataset):
    run = build.Run(make_config(tiny_dataset, "pretrain", "losses.mvm=0", "losses.vtm=0"))
    _, metrics = abstract_step(run, first_batch(run))
    assert "mvm_loss" not in metrics and "vtm_loss" not in metrics and "mlm_loss" in metrics
    trained = steps.trained_modules(run.settings)
    assert "mvm_head" not in trained and "matching" not in trained and "mlm_head" in trained


@pytest.mark.parametrize("task, others", [("retrieval", ()), ("pretrain", ("losses.vtm=0", "losses.mlm=0"))])
def test_the_audio_tower_trains_when_the_retrieval_embedding_reads_it(tiny_dataset, task, others):
    """(Pretraining's matching and MLM losses read the audio anyway: they are off here.)"""
    hearing = steps.Settings.from_config(make_config(tiny_dataset, task, *others))
    deaf = steps.Settings.from_config(make_config(tiny_dataset, task, *others, "model.retrieval_audio=false"))
    assert "audio_encoder" in steps.trained_modules(hearing)
    assert "audio_encoder" not in steps.trained_modules(deaf)


def test_bf16_compute_keeps_float32_parameters_and_optimizer_state(tiny_dataset):
    run = build.Run(make_config(tiny_dataset, "pretrain", "model.dtype=bfloat16"))
    state, metrics = abstract_step(run, first_batch(run))
    floats = [x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert metrics["loss"].dtype == jnp.float32


def test_pretrain_step_values_and_a_nonfinite_step(tiny_dataset):
    """A batch whose loss is NaN (NaN audio) is flagged and leaves parameters and optimizer state as they
    were. Then one real step: the total is the weighted sum of the logged parts; frozen heads do not move,
    trained towers do; the step counter advances."""
    config = make_config(tiny_dataset, "pretrain", "optim.warmup_steps=0")  # warmup's first LR is 0
    run = build.Run(config)
    batch = first_batch(run)
    poisoned = {**batch, "audio": jnp.full_like(batch["audio"], jnp.nan)}
    state = run.factory.create()
    before = jax.device_get((state.params, state.opt_state))  # the step donates its input state
    with run.mesh_context():
        skipped, skipped_metrics = run.train_step(state, poisoned)
        skipped_step, after_skip = jax.device_get((skipped.step, (skipped.params, skipped.opt_state)))
        new_state, metrics = run.train_step(skipped, batch)
    assert float(skipped_metrics["nonfinite"]) == 1 and not np.isfinite(float(skipped_metrics["loss"]))
    assert int(skipped_step) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after_skip)):
        np.testing.assert_array_equal(a, b)

    metrics = jax.device_get(metrics)
    weights = config.losses
    total = sum(weights[name] * metrics[f"{name}_loss"] for name in ("contrastive", "vtm", "mlm", "mvm"))
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-6)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["nonfinite"] == 0
    assert int(new_state.step) == 2
    after = jax.device_get(new_state.params)
    for frozen in ("caption_decoder", "qa_head"):  # untouched by the pretraining losses
        for a, b in zip(jax.tree.leaves(before[0][frozen]), jax.tree.leaves(after[frozen])):
            np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[0]["video_encoder"]),
                                                      jax.tree.leaves(after["video_encoder"]))]
    assert np.mean(moved) > 0.9


@pytest.mark.slow  # I3D compiles for over a minute on 2 cores
def test_i3d_batch_statistics_update_in_training(tiny_dataset):
    run = build.Run(make_config(tiny_dataset, "retrieval", "model.video.name=i3d", "optim.warmup_steps=0"))
    batch = first_batch(run)
    state = run.factory.create()
    assert state.batch_stats, "I3D has BatchNorm statistics"
    before = jax.device_get(state.batch_stats)
    with run.mesh_context():
        new_state, metrics = run.train_step(state, batch)
    after = jax.device_get(new_state.batch_stats)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
    assert any(changed) and np.isfinite(float(metrics["loss"]))



def _pretrain_loss_pass_by_pass(vlm, batch, rng, settings, train):
    """The reference: the pretraining losses with one text-tower pass per kind of text and one fusion pass per
    loss (as `pretrain_loss` was before it batched them), contrastive, vtm and mlm only."""
    from vlm_jax.train import losses
    k_mine, k_mlm, _ = jax.random.split(rng, 3)
    valid = batch["caption_valid"].astype(bool)
    video, audio = vlm.encode_video(batch["video"], batch["audio"], train=train)
    text = vlm.encode_text(batch["caption"], batch["caption_mask"], train=train)
    video_emb, text_emb, scale = vlm.embed(video, text, audio)
    contrastive, _ = losses.contrastive_loss(video_emb, text_emb, scale, valid)
    hard_text, hard_video = losses.mine_hard_negatives(scale * video_emb @ text_emb.T, k_mine, valid)
    negative = vlm.encode_text(batch["negative"], batch["negative_mask"], train=train)
    logits = [vlm.match(vlm.fuse(v, a, t, train=train)) for v, a, t in (
        (video, audio, text), (video, audio, take_rows(text, hard_text)),
        (take_rows(video, hard_video), take_rows(audio, hard_video), text), (video, audio, negative))]
    neg_valid = jnp.stack([valid & valid[hard_text], valid & valid[hard_video],
                           valid & batch["has_negative"].astype(bool)])
    vtm, _ = losses.matching_loss(logits[0], jnp.concatenate(logits[1:]), valid, neg_valid.reshape(-1))
    masked_ids, targets = losses.mask_tokens(batch["caption"], batch["caption_mask"], k_mlm, settings.mlm_ratio)
    targets = jnp.where(valid[:, None], targets, -1)
    fused = vlm.fuse(video, audio, vlm.encode_text(masked_ids, batch["caption_mask"], train=train), train=train)
    limit = max(1, round(settings.mlm_ratio * targets.shape[1]))
    positions = jnp.argsort(targets < 0, axis=1, stable=True)[:, :limit]
    mlm_logits = vlm.mlm(fused._replace(tokens=jnp.take_along_axis(fused.tokens, positions[..., None], axis=1)))
    mlm, _ = losses.mlm_loss(mlm_logits, jnp.take_along_axis(targets, positions, axis=1))
    return {"contrastive_loss": contrastive, "vtm_loss": vtm, "mlm_loss": mlm}


def test_one_pass_per_tower_gives_the_pass_by_pass_losses(tiny_dataset):
    """`pretrain_loss` encodes captions, negatives and masked captions in one text-tower pass and fuses vtm's and
    mlm's pairs in one fusion pass (a smaller program to compile); its losses are those of separate passes."""
    run = build.Run(make_config(tiny_dataset, "pretrain"))
    batch, variables = first_batch(run), run.factory.create().variables()
    rng = jax.random.key(3)
    def jitted(method):  # compiled: faster than running the model op by op
        return jax.jit(lambda v, b, r: run.model.apply(v, b, r, run.settings, False, method=method))

    with run.mesh_context():
        _, metrics = jitted(steps.pretrain_loss)(variables, batch, rng)
        reference = jitted(_pretrain_loss_pass_by_pass)(variables, batch, rng)
    for name, value in reference.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
