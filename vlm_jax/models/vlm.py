"""The video-language model: towers, fusion and heads composed from the config's `model` block.

Any video encoder x text encoder x audio (or none) x fusion x caption decoder is one config line each:
`model.video.name`, `model.text.name`, `model.audio.name` (None = off), `model.fusion.name`,
`model.caption.name`.
Each family keeps its own block (`model.video.vivit`, `model.video.cnn2d`, ...), so switching the name
needs no other change. Methods are the entry points the train steps and evaluators call through
`VLM.apply(variables, ..., method=VLM.<name>)`; `__call__` runs every part once (for init and tests).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import audio, fusion, heads
from vlm_jax.models.layers import Encoded, field_choices, to_unit_range
from vlm_jax.models.text import bert, bow
from vlm_jax.models.video import cnn2d, cnn_rnn, i3d, linear, single_frame, vivit

VIDEO_ENCODERS = {"vivit": vivit.ViViT, "cnn2d": cnn2d.CNN2D, "i3d": i3d.I3D, "cnn_rnn": cnn_rnn.CNNRNN,
                  "single_frame": single_frame.SingleFrame, "linear": linear.LinearVideo}
TEXT_ENCODERS = {"bow": bow.BagOfWords, "linear": bow.BagOfWords, "bert": bert.Bert}
AUDIO_ENCODERS = {"audio_transformer": audio.AudioTransformer}
CAPTION_DECODERS = {"transformer": heads.CaptionDecoder, "linear": heads.LinearCaptionDecoder}
# Each family's SIZES table per encoder name: the encoder's block per preset.
_SIZE_TABLES = {
    "video": {"vivit": vivit.SIZES, "cnn2d": cnn2d.SIZES, "i3d": i3d.SIZES, "cnn_rnn": cnn_rnn.SIZES,
              "single_frame": single_frame.SIZES, "linear": linear.SIZES},
    "text": {"bow": bow.SIZES, "linear": bow.LINEAR_SIZES, "bert": bert.SIZES},
    "audio": {"audio_transformer": audio.SIZES},
}
# Fusion, caption decoder, MVM and QA sizes per preset, and the retrieval embedding width.
_HEAD_SIZES = {
    "tiny": {"width": 64, "depth": 1, "num_heads": 2, "mlp_dim": 128, "embed_dim": 64},
    "small": {"width": 256, "depth": 2, "num_heads": 4, "mlp_dim": 1024, "embed_dim": 256},
    "base": {"width": 384, "depth": 4, "num_heads": 6, "mlp_dim": 1536, "embed_dim": 256},
}


FAMILIES = {"video": VIDEO_ENCODERS, "text": TEXT_ENCODERS, "audio": AUDIO_ENCODERS}
def field_problems(model: ml_collections.ConfigDict) -> list[tuple[str, str, Any]]:
    """(key, allowed values, value) for each field of the chosen modules' blocks that holds a value outside
    the module's `field_choices`."""
    chosen = {f"{family}.{model[family].name}": (FAMILIES[family][model[family].name], model[family][model[family].name])
              for family in FAMILIES if model[family].name}
    chosen.update({"fusion": (fusion.FUSIONS[model.fusion.name], model.fusion),
                   "caption": (CAPTION_DECODERS[model.caption.name], model.caption)})
    problems = []
    for path, (module, block) in chosen.items():
        for field, allowed in field_choices(module).items():
            if field in block and block[field] not in allowed:
                problems.append((f"model.{path}.{field}", ", ".join(map(str, allowed)), block[field]))
    return problems


_NOT_CONFIG = {"parent", "name", "dtype", "param_dtype"}


def _fields(module: type[nn.Module]) -> dict:
    """Every configurable field of a tower with its default (variant, pool, remat, scan, mask_ratio, ...),
    so each is one config line; the preset's SIZES table then sets the sizes."""
    return {f.name: f.default for f in dataclasses.fields(module)
            if f.name not in _NOT_CONFIG and f.default is not dataclasses.MISSING}


def model_config(size: str) -> ml_collections.ConfigDict:
    """The `model` block for a preset size: every family's own block, so any one can be chosen by name."""
    heads_size = _HEAD_SIZES[size]
    width = heads_size["width"]
    blocks = {family: {name: ml_collections.ConfigDict({**_fields(module), **_SIZE_TABLES[family][name][size]})
                       for name, module in modules.items()} for family, modules in FAMILIES.items()}
    video = {"name": "vivit", **blocks["video"]}
    if size == "tiny":  # factorised attention is the cheaper one on a CPU (docs/bench.md)
        video["vivit"].variant = "factorised_encoder"
    return ml_collections.ConfigDict({
        "dtype": "float32",
        "param_dtype": "float32",
        "embed_dim": heads_size["embed_dim"],
        # retrieval embeds the clip's audio with its video: None follows the audio tower (on iff model.audio.name)
        "retrieval_audio": ml_collections.config_dict.placeholder(bool),
        "video": video,
        "text": {"name": "bert", **blocks["text"]},
        "audio": {"name": "audio_transformer", **blocks["audio"]},
        "fusion": {"name": "cross_attention", "width": width, "depth": heads_size["depth"],
                   "num_heads": heads_size["num_heads"], "mlp_dim": heads_size["mlp_dim"], "dropout": 0.0,
                   "remat": "none"},
        "caption": {"name": "transformer", "width": width, "depth": heads_size["depth"],
                    "num_heads": heads_size["num_heads"], "mlp_dim": heads_size["mlp_dim"], "dropout": 0.0,
                    "remat": "none", "max_len": 64},
        "mvm": {"tubelet": (2, 16, 16), "mask_ratio": 0.5, "width": width, "depth": 1,
                "num_heads": heads_size["num_heads"], "mlp_dim": heads_size["mlp_dim"]},
        "qa": {"mlp_dim": heads_size["mlp_dim"], "dropout": 0.0},
    })


def _kwargs(block: Any) -> dict:
    """A config block as constructor keyword arguments (JSON lists become the tuples modules expect)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(block).items()}


def video_encoder(config: ml_collections.ConfigDict, name: str, **dtypes: Any) -> nn.Module:
    """The video encoder `name` built from its block of the `model` config (`config.video[name]`); `dtypes`
    are its `dtype` and `param_dtype`."""
    return VIDEO_ENCODERS[name](**_kwargs(config.video[name]), **dtypes)


def retrieval_uses_audio(config: ml_collections.ConfigDict) -> bool:
    """`model.retrieval_audio` resolved: None means "whenever there is an audio tower"."""
    setting = config.retrieval_audio
    return bool(config.audio.name) if setting is None else setting


def caption_decoder(config: ml_collections.FrozenConfigDict, decode: bool = False) -> nn.Module:
    """The caption decoder the `model` block describes; `decode=True` is the cached copy for generation,
    which runs on the same params (`params["caption_decoder"]`). `model.caption` holds the fields of every
    decoder (as `model.fusion` does); each reads its own."""
    module = CAPTION_DECODERS[config.caption.name]
    fields = {f.name for f in dataclasses.fields(module)} - _NOT_CONFIG
    kwargs = {k: v for k, v in _kwargs(config.caption).items() if k in fields}
    return module(**kwargs, decode=decode, dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class VLM(nn.Module):
    """Towers + fusion + heads. `config` is the (frozen) `model` block; `num_answers` comes from the data."""
    config: ml_collections.FrozenConfigDict
    num_answers: int

    def setup(self):
        cfg = self.config
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        self.video_encoder = VIDEO_ENCODERS[cfg.video.name](**_kwargs(cfg.video[cfg.video.name]), **kw)
        self.text_encoder = TEXT_ENCODERS[cfg.text.name](**_kwargs(cfg.text[cfg.text.name]), **kw)
        self.audio_encoder = (AUDIO_ENCODERS[cfg.audio.name](**_kwargs(cfg.audio[cfg.audio.name]), **kw)
                              if cfg.audio.name else None)
        fusion_kwargs = {k: v for k, v in _kwargs(cfg.fusion).items() if k != "name"}
        self.fusion = fusion.FUSIONS[cfg.fusion.name](**fusion_kwargs, **kw)
        self.contrastive = heads.ContrastiveHead(embed_dim=cfg.embed_dim, use_audio=retrieval_uses_audio(cfg), **kw)
        self.matching = heads.MatchingHead(**kw)
        self.mlm_head = heads.MlmHead(**kw)
        mvm = _kwargs(cfg.mvm)
        self.mvm_head = heads.MvmHead(width=mvm["width"], depth=mvm["depth"], num_heads=mvm["num_heads"],
                                      mlp_dim=mvm["mlp_dim"], target_dim=math.prod(mvm["tubelet"]) * 3, **kw)
        self.caption_decoder = caption_decoder(cfg)
        self.qa_head = heads.QaHead(num_answers=self.num_answers, **_kwargs(cfg.qa), **kw)

    # ------------------------------------------------------------------ towers

    def encode_video(self, video: jax.Array, audio_wave: jax.Array | None = None, *,
                     train: bool = False) -> tuple[Encoded, Encoded | None]:
        """uint8 (or [-1, 1] float) frames [B, T, H, W, 3] and the waveform -> video and audio tokens."""
        pixels = to_unit_range(video, jnp.dtype(self.config.dtype))
        encoded = self.video_encoder(pixels, train=train)
        sound = None
        if self.audio_encoder is not None and audio_wave is not None:
            sound = self.audio_encoder(audio_wave, train=train)
        return encoded, sound

    def encode_text(self, ids: jax.Array, mask: jax.Array, *, train: bool = False) -> Encoded:
        return self.text_encoder(ids, mask, train=train)

    # ------------------------------------------------------------------ heads

    def embed(self, video: Encoded, text: Encoded,
              audio: Encoded | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Unit-norm retrieval embeddings of both sides and the contrastive logit scale; the clip's side
        includes `audio` when `model.retrieval_audio` resolves to on (which then requires it)."""
        return self.contrastive(video.pooled, text.pooled, None if audio is None else audio.pooled)

    def embed_video(self, video: Encoded, audio: Encoded | None = None) -> jax.Array:
        """The unit-norm retrieval embedding of a clip alone (search index entries), as `embed` makes it."""
        return self.contrastive.embed_video(video.pooled, None if audio is None else audio.pooled)

    def embed_text(self, text: Encoded) -> jax.Array:
        """The unit-norm retrieval embedding of the text tower's output alone (search queries)."""
        return self.contrastive.embed_text(text.pooled)

    def fuse(self, video: Encoded, audio: Encoded | None, text: Encoded, *, train: bool = False,
             clip_rows: jax.Array | None = None) -> fusion.Fused:
        """The fused pairs; `text` may hold k rows per clip (clip-major), each clip meeting each of its texts,
        or k rows per entry of `clip_rows`, entry g meeting clip `clip_rows[g]` (see `fusion`)."""
        return self.fusion(video, text, audio, train=train, clip_rows=clip_rows)

    def match(self, fused: fusion.Fused) -> jax.Array:
        """Video-text matching logit [B]."""
        return self.matching(fused.pooled)

    def mlm(self, fused: fusion.Fused) -> jax.Array:
        """Masked-language-model logits [B, L, vocab], tied to the text tower's word embeddings."""
        return self.mlm_head(fused.tokens, self.text_encoder.embedding_table())

    def answer(self, fused: fusion.Fused, *, train: bool = False) -> jax.Array:
        """Answer logits [B, num_answers]."""
        return self.qa_head(fused.pooled, train=train)

    def caption(self, tokens: jax.Array, video: Encoded, audio: Encoded | None, *, train: bool = False) -> jax.Array:
        """Teacher-forced caption logits [B, L, vocab]."""
        return self.caption_decoder(tokens, video, audio, train=train)

    def mvm(self, video: Encoded, positions: jax.Array, num_cubes: int) -> jax.Array:
        """Pixels of the masked cubes at `positions` [B, M] of the `num_cubes` cubes of `model.mvm.tubelet`."""
        return self.mvm_head(video, positions, num_cubes)

    def __call__(self, video: jax.Array, audio_wave: jax.Array | None, caption: jax.Array, caption_mask: jax.Array,
                 question: jax.Array, question_mask: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Every part once, on one batch: what init traces, and what the tests check end to end."""
        video_tokens, audio_tokens = self.encode_video(video, audio_wave, train=train)
        caption_tokens = self.encode_text(caption, caption_mask, train=train)
        video_emb, text_emb, scale = self.embed(video_tokens, caption_tokens, audio_tokens)
        fused_caption = self.fuse(video_tokens, audio_tokens, caption_tokens, train=train)
        fused_question = self.fuse(video_tokens, audio_tokens, self.encode_text(question, question_mask,
                                                                                train=train), train=train)
        grid = vivit.tubelet_grid(video.shape, tuple(self.config.mvm.tubelet))
        cubes = math.prod(grid)
        masked = max(1, round(self.config.mvm.mask_ratio * cubes))
        positions = jnp.broadcast_to(jnp.arange(masked), (video.shape[0], masked))
        return {
            "video_embedding": video_emb, "text_embedding": text_emb, "logit_scale": scale,
            "match": self.match(fused_caption),
            "mlm": self.mlm(fused_caption),
            "answer": self.answer(fused_question, train=train),
            "caption": self.caption(caption, video_tokens, audio_tokens, train=train),
            "mvm": self.mvm(video_tokens, positions, cubes),
        }
