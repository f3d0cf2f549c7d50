"""Evaluators on the micro model (untrained) and the real tiny data set, in process."""

import numpy as np

from conftest import MICRO, data_dir_of
from vlm_jax import config as config_lib
from vlm_jax.data.moving_shapes_language import CAPTION_STYLES
from vlm_jax.eval import evaluators
from vlm_jax.run import build


def test_retrieval_recall_per_caption_style_adds_up_to_the_overall_recall(tiny_dataset):
    """moving_shapes names its caption styles, so text-to-video R@1 and R@5 come per style too; weighted by
    each style's caption count they average to the overall recall (every caption ranked against all videos)."""
    data_dir = data_dir_of(tiny_dataset)
    run = build.Run(config_lib.load("configs/pretrain.py:tiny", [*MICRO, f"data.data_dir={data_dir}",
                                                                "eval.rerank_k=0", "eval.max_batches=2"]))
    evaluator = evaluators.RetrievalEvaluator(run)
    state = run.factory.create()
    results = evaluator(state, "test")
    out = evaluator.outputs(state, "test")
    counts = out["caption_valid"][out["valid"].astype(bool)].sum(axis=0)  # captions per slot, i.e. per style
    assert results["retrieval/t2v_R@5"] > 0  # not a vacuous agreement of zeros
    for k in (1, 5):
        per_style = [results[f"retrieval/t2v_R@{k}_{style}"] for style in CAPTION_STYLES]
        np.testing.assert_allclose(np.average(per_style, weights=counts), results[f"retrieval/t2v_R@{k}"])
    assert not any(key.startswith("retrieval/t2v_R@10_") for key in results)
