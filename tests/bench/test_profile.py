"""`vlm_jax.bench.profile`: a real `jax.profiler` trace of a small jitted call, summed by operation kind. What
the times are is never asserted, only that the program's own operations are found and the runtime's are not."""

import jax
import jax.numpy as jnp

from vlm_jax.bench import profile


def test_kind_is_the_instruction_name_prefix():
    assert [profile.kind(n) for n in ("dot.12", "convolution", "fusion.3.clone", "while.7", "copy_fusion")] \
        == ["dot", "convolution", "fusion", "while", "copy_fusion"]


def test_profile_sums_the_traced_operations(monkeypatch, tmp_path):
    step = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
    a, b = jnp.ones((256, 256)), jnp.ones((256, 256))
    def call():
        return jax.block_until_ready(step(a, b))

    call.compiled_text = lambda: step.lower(a, b).compile().as_text()
    call()  # compiled before the trace, as `our_call` does
    monkeypatch.setattr(profile, "our_call", lambda workload: call)
    report = profile.profile("vivit_train", calls=2, trace_dir=tmp_path)
    times = profile.operation_times(tmp_path)
    hlo = step.lower(a, b).compile().as_text()
    assert times and all(name in hlo for name in times), sorted(times)  # the program's own operations only
    assert report.startswith("vivit_train:") and f"| {profile.kind(times.most_common(1)[0][0])} |" in report


def test_sources_unwrap_transformations_and_fold_layers():
    text = """
  %ynn_fusion.75 = f32[66,64]{1,0} fusion(%a, %b), kind=kCustom, calls=%f, metadata={op_name="jit(step)/jvp(ViViT)/transformer/layer_3/attention/query/dot_general" stack_frame_id=93}
  %dot.2 = f32[64,64]{1,0} dot(%a, %b), metadata={op_name="jit(step)/transpose(jvp(ViViT))/transformer/layer_0/mlp/Dense_1/dot_general"}
  %multiply.1 = f32[64]{0} multiply(%a, %b), metadata={op_name="jit(step)/mul"}
"""
    assert profile.sources(text) == {"ynn_fusion.75": "forward transformer/layer_*/attention/query",
                                     "dot.2": "backward transformer/layer_*/mlp/Dense_*",
                                     "multiply.1": "step"}
