"""What one clip becomes: augmentation that keeps its text true to its pixels."""

import numpy as np

from vlm_jax.data import builders, clip_transform, pipeline, tokenizer
from vlm_jax.data.moving_shapes_language import ANSWERS, QA_TYPES


def test_flip_swaps_left_and_right_in_the_text(tiny_dataset):
    """Wherever the pixels are mirrored, a 'left' caption becomes 'right' and the answer follows."""
    dataset = builders.open_dataset(tiny_dataset)
    source = dataset.as_data_source(split="train")
    spec = pipeline.Spec(dataset_path=str(tiny_dataset), num_frames=16, image_size=64, max_text_len=40, batch_size=1,
                         seed=0, flip=True)
    transform = clip_transform.for_dataset(spec, dataset)
    example = next(e for e in (source[i] for i in range(len(source)))
                   if len(e["object_motions"]) == 1 and e["object_motions"][0] == b"left")
    flipped_seen = kept_seen = direction_answers = 0
    for seed in range(40):
        out = transform(example, np.random.default_rng(seed))
        flipped = np.array_equal(out["video"], example["video"][:, :, ::-1])
        caption, negative = tokenizer.decode(out["caption"]), tokenizer.decode(out["negative"])
        true_side, false_side = ("right", "left") if flipped else ("left", "right")
        assert true_side in caption and false_side not in caption, caption
        direction_twin = false_side in negative and true_side not in negative
        sound_twin = true_side in negative and false_side not in negative and negative != caption
        assert direction_twin or sound_twin, negative
        for kind, answer in zip(out["question_types"], out["answers"]):
            if kind >= 0 and QA_TYPES[kind] == "direction":
                assert ANSWERS[answer] == true_side
                direction_answers += 1
        if flipped:
            flipped_seen += 1
        else:
            kept_seen += 1
            assert np.array_equal(out["video"], example["video"])
    assert flipped_seen and kept_seen and direction_answers
