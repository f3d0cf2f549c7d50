"""`flops.count_flops` against closed-form FLOP counts, and `flops.count_equations`; no timing is asserted."""

import jax
import jax.numpy as jnp
import pytest

from vlm_jax.bench import flops
from vlm_jax.models.video.vivit import ViViT


def _flops(fn, *args) -> float:
    return flops.count_flops(jax.make_jaxpr(fn)(*args))


def test_matmul_and_its_gradient():
    a, b = jnp.ones((6, 5)), jnp.ones((5, 7))
    assert _flops(jnp.dot, a, b) == 2 * 6 * 5 * 7
    loss = lambda a, b: jnp.sum(jnp.dot(a, b) ** 2)
    assert _flops(jax.grad(loss, argnums=(0, 1)), a, b) == 3 * 2 * 6 * 5 * 7  # forward, d_a and d_b


def test_scan_bodies_count_once_per_iteration_inside_jit():
    def body(carry, _):
        return jnp.tanh(carry @ jnp.ones((4, 4))), None
    run = jax.jit(lambda x: jax.lax.scan(body, x, None, length=9)[0])
    assert _flops(run, jnp.ones((3, 4))) == 9 * 2 * 3 * 4 * 4


def test_equations_count_sub_jaxprs_in_place_of_their_holder():
    inner = jax.jit(lambda x: jnp.sin(x) * 2.0)  # sin, mul
    body = lambda carry, _: (jnp.tanh(carry) + 1.0, None)  # tanh, add: once, not per iteration
    program = jax.make_jaxpr(lambda x: jax.lax.scan(body, inner(x), None, length=9)[0] - 1.0)(jnp.ones(3))
    assert [e.primitive.name for e in program.jaxpr.eqns] == ["jit", "scan", "sub"]
    assert flops.count_equations(program) == 2 + 2 + 1


def test_convolution_counts_every_output_times_its_window():
    x, kernel = jnp.ones((2, 10, 12, 3)), jnp.ones((3, 3, 3, 8))  # NHWC, HWIO
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jax.eval_shape(conv, x, kernel).shape
    assert _flops(conv, x, kernel) == 2 * (out[0] * out[1] * out[2] * 8) * (3 * 3 * 3)


@pytest.mark.parametrize("batch_bytes", [None, 1])  # the whole batch at once; one example per lax.map step
def test_vivit_forward_equals_the_transformer_formula(monkeypatch, batch_bytes):
    """Tubelet projection + per layer 4 projections (8 L D^2), the MLP (4 L D M) and attention (4 L^2 D),
    L = tokens + CLS; counted through the grouped CPU attention's lax.map when it splits the batch."""
    from vlm_jax.models import layers
    if batch_bytes:
        monkeypatch.setattr(layers, "ATTENTION_GROUP_BYTES", batch_bytes)
    batch, width, depth, mlp = 4, 32, 2, 64
    model = ViViT(variant="joint", width=width, depth=depth, num_heads=2, mlp_dim=mlp, tubelet=(2, 8, 8))
    video = jnp.ones((batch, 4, 16, 16, 3))
    params = model.init(jax.random.key(0), video[:1])
    tokens, patch = 2 * 2 * 2, 2 * 8 * 8 * 3
    length = tokens + 1
    per_layer = 8 * length * width**2 + 4 * length * width * mlp + 4 * length**2 * width
    expected = batch * (2 * tokens * patch * width + depth * per_layer)
    assert _flops(lambda p, v: model.apply(p, v).pooled, params, video) == expected
