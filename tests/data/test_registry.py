"""The data-set registry: names, and what each entry promises about its builds."""

import pytest

from vlm_jax.data import builders, clip_transform, registry
from vlm_jax.errors import UserError


def test_unknown_name_lists_the_data_sets():
    with pytest.raises(UserError, match="^unknown data set 'kinetics'; choose moving_shapes or video_folder$"):
        registry.lookup("kinetics")


def test_a_fixed_answer_vocabulary_is_the_one_the_build_declares(tiny_dataset):
    declared = clip_transform.Vocabulary.of(builders.open_dataset(tiny_dataset)).answers
    assert registry.lookup("moving_shapes").num_answers == len(declared)
