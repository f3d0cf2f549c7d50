"""Scene sampling: the held-out attribute-motion pairs."""

import numpy as np

from vlm_jax.data.moving_shapes_scene import sample_scene


def test_novel_split_holds_exactly_the_held_out_combinations():
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert not sample_scene(rng, 16, 2.0, novel=False).is_novel()
        assert sample_scene(rng, 16, 2.0, novel=True).is_novel()
