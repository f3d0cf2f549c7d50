"""Where in the video did the text look? Per-frame heatmaps of the regions a caption or question relied on,
which words mattered, and how well the heatmaps hit the data set's ground-truth boxes.

    predictor = Predictor.load("runs/pretrain")
    clip = next(referenced_clips(predictor.run, ["test:0"]).clips)
    explanation = explain(predictor, clip, "a red circle moves left")   # method "auto", "attention", "gradient"
    save(explanation, "out", "test_0")                                  # {"gif": ..., "png": ...}
    score_split(predictor, "test", limit=64)                            # pointing game etc., in percent

Methods:
- `attention`: the fusion's text-to-video cross-attention (cross_attention, co_attention), averaged over
  heads, layers and the text's tokens, one weight per video token, placed on the pixels by the video
  tower's `token_grid` (audio keys are left out).
- `gradient`: gradient x input on the frames as the model sees them (pixels in [-1, 1]), |grad . x| summed
  over colour channels; any model. Mid-grey pixels are ~0 in that space, so they score ~0 whatever the
  gradient: compare with the random model's score (`score_split` does).
- `auto`: attention when the fusion has cross-attention, the run's task trains it and the video tower's
  tokens have a spatial layout; else gradient.

Both explain one score: the chosen (most probable) answer's logit for a QA run (the text is the question),
else the scaled cosine similarity of the retrieval embeddings. Words are scored by occlusion: the drop in
that score when the word piece is replaced by [MASK]. Frames are scored by their share of the heatmap.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from PIL import Image

from vlm_jax.apps.predictor import Clip, Predictor, dataset_clips
from vlm_jax.data import features, pipeline, tokenizer, video_io
from vlm_jax.errors import UserError
from vlm_jax.models import fusion as fusion_lib
from vlm_jax.models.layers import TokenGrid
from vlm_jax.run.build import Run
from vlm_jax.train import steps

METHODS = ("auto", "attention", "gradient")
GIF_FRAME_MS = 250


@dataclasses.dataclass
class Explanation:
    """One clip and text explained. frames: uint8 [T, H, W, 3] as the model saw them; heatmap: float32
    [T, H, W] in [0, 1] (divided by its maximum, so frames compare); frame_importance: [T], each frame's
    share of the heatmap's total, summing to 1; tokens: the text's word pieces (without [CLS] / [SEP]) and
    token_scores: the score's drop when each is masked; method: "attention" or "gradient"; score: the
    explained score (answer logit or scaled similarity)."""
    clip_id: str
    text: str
    frames: np.ndarray
    heatmap: np.ndarray
    frame_importance: np.ndarray
    tokens: list[str]
    token_scores: np.ndarray
    method: str
    score: float


def resolve_method(run: Run, method: str) -> str:
    """"attention" or "gradient" for `method` on this run; UserError for a method the run cannot do."""
    if method not in METHODS:
        raise UserError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    fusion = run.config.model.fusion.name
    has_cross_attention = fusion_lib.FUSIONS[fusion].CROSS_ATTENTION
    if method == "attention" and not has_cross_attention:
        attending = ", ".join(name for name, module in fusion_lib.FUSIONS.items() if module.CROSS_ATTENTION)
        raise UserError(f"the attention method needs a fusion with cross-attention ({attending}); "
                        f"this run's fusion is {fusion!r}: use the gradient method")
    if method == "auto":
        # a retrieval run's score never passes through the fusion, so its attention would explain nothing;
        # a tower whose tokens have no spatial layout (ViViT's factorised encoder, the CNN+RNN) gives maps
        # that are flat within each frame
        trained = "fusion" in steps.trained_modules(run.settings)
        grid = video_token_grid(run)
        spatial = grid.height * grid.width > 1
        return "attention" if has_cross_attention and trained and spatial else "gradient"
    return method


def video_token_grid(run: Run) -> TokenGrid:
    """Where the run's video tower puts its tokens in a clip of the configured frames and size."""
    data = run.config.data
    shape = (1, int(data.num_frames), int(data.image_size), int(data.image_size), 3)
    return run.model.bind({}).video_encoder.token_grid(shape)


def pixels_of(video: np.ndarray) -> np.ndarray:
    """uint8 frames -> float32 in [-1, 1], exactly as `VLM.encode_video` converts them."""
    return video.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


# ---------------------------------------------------------------------- model functions (through model.apply)

def _broadcast(encoded, count: int):
    """One clip's encoding repeated for `count` texts (as is when it already has `count` rows)."""
    if encoded is None or encoded.tokens.shape[0] == count:
        return encoded
    grow = lambda x: None if x is None else jnp.broadcast_to(x, (count,) + x.shape[1:])
    return type(encoded)(*(grow(x) for x in encoded))


def _score_table(vlm, pixels: jax.Array, audio: jax.Array, ids: jax.Array, mask: jax.Array, qa: bool) -> jax.Array:
    """Per text row: the answer logits [B, answers] (QA), or the scaled cosine similarity [B, 1] of the clip
    (with its sound where retrieval embeds it) and the text. One clip may face many texts."""
    video, sound = vlm.encode_video(pixels, audio)
    text = vlm.encode_text(ids, mask)
    count = ids.shape[0]
    video, sound = _broadcast(video, count), _broadcast(sound, count)
    if qa:
        return vlm.answer(vlm.fuse(video, sound, text)).astype(jnp.float32)
    video_emb, text_emb, scale = vlm.embed(video, text, sound)
    return (scale * jnp.sum(video_emb * text_emb, axis=-1))[:, None]


def _cross_attention(vlm, pixels: jax.Array, audio: jax.Array, ids: jax.Array, mask: jax.Array,
                     num_video_tokens: int) -> None:
    """The fusion pass whose sown attention `_video_token_weights` reads; checks the video token count."""
    video, sound = vlm.encode_video(pixels, audio)
    if video.tokens.shape[1] != num_video_tokens:
        raise ValueError(f"the video tower gave {video.tokens.shape[1]} tokens; its token_grid says "
                         f"{num_video_tokens}")
    vlm.fuse(video, sound, vlm.encode_text(ids, mask))


def _video_token_weights(attention: dict, fusion: str, mask: jax.Array, num_video_tokens: int) -> jax.Array:
    """[B, N_video]: the text-query -> video-key attention of every cross-attention layer of the fusion,
    averaged over heads, over the valid text tokens, then over layers."""
    layers = []
    valid = mask.astype(jnp.float32)[..., None]  # [B, Lq, 1]
    for path, sown in traverse_util.flatten_dict(attention["fusion"]).items():
        if "cross_attention" not in path or (fusion == "co_attention" and not path[0].startswith("text_layer_")):
            continue  # self-attention, or co-attention's video stream attending to the text
        for weights in sown:  # [..., B, heads, Lq, Lk]; a scanned stack adds a leading layer axis
            # the context is [video, audio] tokens (fusion.py), so the video keys come first
            per_query = weights.reshape((-1,) + weights.shape[-4:]).mean(axis=(0, 2))[..., :num_video_tokens]
            layers.append((per_query * valid).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1.0))
    if not layers:
        raise ValueError(f"the {fusion} fusion sowed no cross-attention weights")
    return jnp.mean(jnp.stack(layers), axis=0)


def tokens_to_pixels(weights: jax.Array, grid: TokenGrid, frames: int, height: int, width: int) -> jax.Array:
    """Token weights [B, grid.size] -> [B, frames, height, width]: each weight held over its tokens' frames
    (nearest in time), spread bilinearly in space (uniformly when the grid has no spatial layout); frames the
    grid does not cover are zero."""
    start, stop = grid.frames or (0, frames)
    batch = weights.shape[0]
    cells = weights.reshape(batch, grid.time, grid.height, grid.width).astype(jnp.float32)
    cells = jax.image.resize(cells, (batch, stop - start, grid.height, grid.width), "nearest")
    cells = jax.image.resize(cells, (batch, stop - start, height, width), "linear")
    return jnp.zeros((batch, frames, height, width), jnp.float32).at[:, start:stop].set(cells)


class Explainer:
    """A run's explanation programs, jitted once; the variables are an argument, so a trained model and a
    random one of the same config share the compiled programs."""

    def __init__(self, run: Run):
        self.run = run
        data = run.config.data
        self.fusion = run.config.model.fusion.name
        self.max_text_len = int(data.max_text_len)
        self.frames, self.size = int(data.num_frames), int(data.image_size)
        self.grid = video_token_grid(run)
        model, qa, grid, fusion = run.model, steps.TASKS[run.config.train.task].questions, self.grid, self.fusion

        def table(variables, pixels, audio, ids, mask):
            return model.apply(variables, pixels, audio, ids, mask, qa, method=_score_table)

        def gradient(variables, pixels, audio, ids, mask):
            # the max over the table is the chosen answer's logit (or the only similarity), row by row
            total = lambda p: table(variables, p, audio, ids, mask).max(axis=-1).sum()
            return jnp.abs(jax.grad(total)(pixels) * pixels).sum(axis=-1)

        def attention(variables, pixels, audio, ids, mask):
            _, sown = model.apply(variables, pixels, audio, ids, mask, grid.size, method=_cross_attention,
                                  mutable=["attention"])
            weights = _video_token_weights(sown["attention"], fusion, mask, grid.size)
            return tokens_to_pixels(weights, grid, self.frames, self.size, self.size)

        self._table = jax.jit(table)
        self._heatmaps = {"gradient": jax.jit(gradient), "attention": jax.jit(attention)}

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids [1, L], mask [1, L], the positions of the word pieces between [CLS] and [SEP])."""
        ids, mask = tokenizer.encode([text], self.max_text_len)
        positions = list(range(1, int(mask.sum()) - 1))
        if not text.strip() or not positions:
            raise UserError("the text is empty")
        return ids, mask, positions

    def check_clip(self, clip: Clip) -> None:
        """A clip must come as the model takes it (`dataset_clips`, `file_clips` and `referenced_clips` do)."""
        expected = (self.frames, self.size, self.size, 3)
        if clip.video.shape != expected:
            raise UserError(f"clip {clip.id} has frames {clip.video.shape}; the run's model takes {expected}")

    def heatmaps(self, variables: dict, videos: np.ndarray, audios: np.ndarray, ids: np.ndarray,
                 mask: np.ndarray, method: str) -> np.ndarray:
        """Raw (unnormalised, non-negative) heatmaps [B, T, H, W] of clip b for text row b; `method` is
        "attention" or "gradient" (see `resolve_method`)."""
        return np.asarray(self._heatmaps[method](variables, pixels_of(videos), audios, ids, mask))

    def explain(self, variables: dict, clip: Clip, text: str, method: str = "auto") -> Explanation:
        method = resolve_method(self.run, method)
        self.check_clip(clip)
        ids, mask, positions = self.encode(text)
        raw = self.heatmaps(variables, clip.video[None], clip.audio[None], ids, mask, method)[0]
        # occlusion, in one pass: row 0 is the text, row i masks word piece i
        occluded = np.repeat(ids, 1 + len(positions), axis=0)
        occluded[np.arange(1, 1 + len(positions)), positions] = tokenizer.MASK_ID
        table = np.asarray(self._table(variables, pixels_of(clip.video[None]), clip.audio[None], occluded,
                                       np.repeat(mask, len(occluded), axis=0)))
        chosen = int(np.argmax(table[0]))  # QA: the answer chosen on the whole question stays the one scored
        scores = table[:, chosen]
        total, energy = float(raw.sum()), raw.sum(axis=(1, 2))
        peak = float(raw.max())
        return Explanation(
            clip_id=clip.id, text=text, frames=clip.video,
            heatmap=(raw / peak if peak > 0 else np.zeros_like(raw)).astype(np.float32),
            frame_importance=(energy / total if total > 0 else np.full(len(raw), 1.0 / len(raw))).astype(np.float32),
            tokens=tokenizer.word_pieces(ids[0, positions]),
            token_scores=(scores[0] - scores[1:]).astype(np.float32), method=method, score=float(scores[0]))


_EXPLAINERS: "weakref.WeakKeyDictionary[Predictor, Explainer]" = weakref.WeakKeyDictionary()


def explainer_for(predictor: Predictor) -> Explainer:
    """The predictor's Explainer, built (and compiled) once."""
    if predictor not in _EXPLAINERS:
        _EXPLAINERS[predictor] = Explainer(predictor.run)
    return _EXPLAINERS[predictor]


def explain(predictor: Predictor, clip: Clip, text: str, method: str = "auto") -> Explanation:
    """Explain the predictor's score of `clip` with `text` (a caption, or the question of a QA run)."""
    return explainer_for(predictor).explain(predictor.variables, clip, text, method)


# ---------------------------------------------------------------------- scoring against ground truth

def _frame_scores(heatmap: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of heatmap [T, H, W] and boxes [T, K, 4] (ymin, xmin, ymax, xmax in [0, 1]; zero rows pad):
    `has_object`, `hit` (the share of the frame's maximal pixels inside the boxes' union: 1 or 0 for one
    peak, ties split), `energy` (the heatmap mass inside the union over the total) and `area` (the union's
    share of the frame). A frame without mass counts as a uniform map. Pixels are inside by their centres."""
    heatmap = np.asarray(heatmap, np.float64)
    boxes = np.asarray(boxes, np.float64)
    frames, height, width = heatmap.shape
    if boxes.shape[0] != frames or boxes.shape[-1] != 4:
        raise ValueError(f"boxes {boxes.shape} do not match heatmap {heatmap.shape}: want [T, K, 4]")
    ys = ((np.arange(height) + 0.5) / height)[None, None, :, None]
    xs = ((np.arange(width) + 0.5) / width)[None, None, None, :]
    corner = lambda i: boxes[..., i][..., None, None]
    present = np.any(boxes != 0, axis=-1)  # [T, K]
    inside = ((ys >= corner(0)) & (xs >= corner(1)) & (ys <= corner(2)) & (xs <= corner(3))
              & present[..., None, None]).any(axis=1)  # [T, H, W]
    at_peak = heatmap >= heatmap.max(axis=(1, 2), keepdims=True)
    area = inside.mean(axis=(1, 2))
    mass = heatmap.sum(axis=(1, 2))
    energy = np.where(mass > 0, (heatmap * inside).sum(axis=(1, 2)) / np.where(mass > 0, mass, 1.0), area)
    return {"has_object": present.any(axis=-1), "hit": (at_peak & inside).sum(axis=(1, 2)) / at_peak.sum(axis=(1, 2)),
            "energy": energy, "area": area}


def _percent(frame_scores: dict[str, np.ndarray], key: str) -> float:
    """The mean of `key` over the frames with an object, in percent (NaN when no frame has one)."""
    values = frame_scores[key][frame_scores["has_object"]]
    return float(100.0 * values.mean()) if values.size else float("nan")


def pointing_game(heatmap: np.ndarray, boxes: np.ndarray) -> float:
    """Percent of the frames with an object whose heatmap maximum lies inside the union of their boxes (a
    frame whose maximum is shared by several pixels scores the share of them inside: a flat map's expected hit)."""
    return _percent(_frame_scores(heatmap, boxes), "hit")


def energy_in_box(heatmap: np.ndarray, boxes: np.ndarray) -> float:
    """Mean over the frames with an object of the heatmap mass inside the union of the boxes, in percent of
    the frame's mass: a uniform heatmap scores the boxes' area."""
    return _percent(_frame_scores(heatmap, boxes), "energy")


def _clip_boxes(run: Run, records, clip: Clip) -> np.ndarray:
    """The clip's boxes at the frames evaluation samples (the Transform's uniform frame indices)."""
    example = records[clip.metadata["position"]]
    frames = video_io.sample_frame_indices(example["video"].shape[0], int(run.config.data.num_frames), "uniform")
    return np.asarray(example["boxes"], np.float32)[frames]


def score_split(predictor: Predictor, split: str = "test", limit: int = 0, method: str = "auto") -> dict[str, float]:
    """How well the heatmaps of the first `limit` clips of `split` (0: all), each explained with its first
    caption (the boxes are what every caption describes; for a QA run the caption stands for the question),
    hit the ground-truth boxes, in percent: `pointing_game` and `energy_in_box`; the same for the
    run's own random initialisation (`random_*`: the run's factory at `config.seed`), and `box_area`, the
    share of the frame the boxes cover (a uniform heatmap's energy_in_box)."""
    run = predictor.run
    method = resolve_method(run, method)
    dataset, records = pipeline.open_split(run.spec, split)
    if "boxes" not in dataset.info.features:
        raise UserError(f"the data set at {run.spec.dataset_path} has no ground-truth boxes to score explanations by")
    explainer = explainer_for(predictor)
    models = {"": predictor.variables, "random_": run.factory.create().variables()}
    scored: dict[str, list[dict[str, np.ndarray]]] = {prefix: [] for prefix in models}
    clips = (c for c in dataset_clips(run, split, limit).clips if any(t.strip() for t in c.metadata["captions"]))
    while batch := list(itertools.islice(clips, predictor.batch_size)):
        padded = batch + [batch[0]] * (predictor.batch_size - len(batch))  # full batches: one compile
        captions = [next(t for t in c.metadata["captions"] if t.strip()) for c in padded]
        ids, mask = tokenizer.encode(captions, explainer.max_text_len)
        videos, audios = np.stack([c.video for c in padded]), np.stack([c.audio for c in padded])
        boxes = [_clip_boxes(run, records, c) for c in batch]
        for prefix, variables in models.items():
            heatmaps = explainer.heatmaps(variables, videos, audios, ids, mask, method)
            scored[prefix].extend(_frame_scores(h, b) for h, b in zip(heatmaps, boxes))
    if not scored[""]:
        raise UserError(f"the {split} split has no captioned clips to explain")
    joined = {prefix: {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
              for prefix, frames in scored.items()}
    out = {}
    for prefix in models:
        out[f"{prefix}pointing_game"] = _percent(joined[prefix], "hit")
        out[f"{prefix}energy_in_box"] = _percent(joined[prefix], "energy")
    out["box_area"] = _percent(joined[""], "area")
    return out


# ---------------------------------------------------------------------- drawing

def overlay(explanation: Explanation, size: int, alpha: float = 0.6) -> np.ndarray:
    """uint8 [T, size, size, 3]: each frame with the heatmap in the "jet" colours, opaque where it is high.
    The heatmap is stretched to its clip's range first, so a flat map with small differences still shows them."""
    heat = explanation.heatmap - explanation.heatmap.min()
    heat = heat / max(float(heat.max()), 1e-12)
    colours = colormaps["jet"](heat)[..., :3] * 255.0
    heat = heat[..., None]
    blended = explanation.frames * (1.0 - alpha * heat) + colours * (alpha * heat)
    frames = [Image.fromarray(np.clip(f, 0, 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
              for f in blended]
    return np.stack([np.asarray(f) for f in frames])


def save(explanation: Explanation, out_dir: str | Path, stem: str, size: int = 192) -> dict[str, Path]:
    """Write `<stem>.gif` (the overlaid frames, animated) and `<stem>.png` (the overlaid frames in a row,
    frame importance over time, the word pieces coloured by their occlusion scores) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = overlay(explanation, size)
    gif = out_dir / f"{stem}.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)

    count, tokens = len(frames), explanation.tokens
    figure = Figure(figsize=(max(1.6 * count, 0.9 * len(tokens), 6.0), 5.0), layout="constrained")
    grid = figure.add_gridspec(3, count, height_ratios=(2.0, 1.3, 0.7))
    for t, frame in enumerate(frames):
        axes = figure.add_subplot(grid[0, t])
        axes.imshow(frame)
        axes.set_title(f"frame {t}", fontsize=8)
        axes.axis("off")
    bars = figure.add_subplot(grid[1, :])
    bars.bar(np.arange(count), explanation.frame_importance, color="tab:orange")
    bars.set_xticks(np.arange(count))
    bars.set_xlim(-0.5, count - 0.5)
    bars.set_ylabel("share of heatmap", fontsize=8)
    bars.set_xlabel("frame", fontsize=8)
    words = figure.add_subplot(grid[2, :])
    words.set_xlim(0, len(tokens))
    words.set_ylim(0, 1)
    words.axis("off")
    bound = max(float(np.abs(explanation.token_scores).max()), 1e-9)
    norm, colours = TwoSlopeNorm(0.0, -bound, bound), colormaps["coolwarm"]
    for i, (token, score) in enumerate(zip(tokens, explanation.token_scores)):
        words.text(i + 0.5, 0.65, token, ha="center", va="center", fontsize=9,
                   bbox=dict(boxstyle="round", facecolor=colours(norm(float(score))), edgecolor="none"))
        words.text(i + 0.5, 0.15, f"{score:+.2f}", ha="center", va="center", fontsize=7)
    figure.suptitle(f"{explanation.clip_id}: \"{explanation.text}\"  ({explanation.method}, score "
                    f"{explanation.score:.3f}; word colours: score drop when masked)", fontsize=9)
    png = out_dir / f"{stem}.png"
    figure.savefig(png, dpi=100)
    return {"gif": gif, "png": png}


# ---------------------------------------------------------------------- files: `vlm explain` and the report

def file_stem(clip_id: str) -> str:
    """A clip id as a file name (ids of files and data sets may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in clip_id) or "clip"


def explain_to_files(predictor: Predictor, clip: Clip, text: str, method: str,
                     out_dir: str | Path) -> tuple[Explanation, dict[str, Path]]:
    """`explain` the clip and `save` the result into `out_dir`, named after the clip's id: the one naming
    that `vlm explain` and the report's strips share."""
    explanation = explain(predictor, clip, text, method)
    return explanation, save(explanation, out_dir, file_stem(clip.id))


def report_explanations(predictor: Predictor, count: int, scratch: Path) -> list[tuple[str, Path]]:
    """Heatmap strips for the first `count` test clips and their first caption (question, for QA runs): the
    (title, PNG in `scratch`) pairs that `report.write_report` shows as its explanations."""
    _, records = pipeline.open_split(predictor.run.spec, "test")
    field = "questions" if steps.TASKS[predictor.run.config.train.task].questions else "captions"
    pictures = []
    for clip in dataset_clips(predictor.run, "test", limit=count).clips:
        texts = features.texts(records[clip.metadata["position"]][field])
        if not texts:
            continue
        explanation, paths = explain_to_files(predictor, clip, texts[0], "auto", scratch)
        pictures.append((f"{clip.id}: \"{texts[0]}\" ({explanation.method})", paths["png"]))
    return pictures
