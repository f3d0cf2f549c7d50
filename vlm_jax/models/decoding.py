"""Caption generation: beam search with a GNMT length penalty over the caption decoder's KV cache.

One jitted `jax.lax.while_loop` with static shapes: every step feeds one token per beam through the cached
decoder, so a step costs O(length) attention instead of re-running the whole prefix. `beam_size=1` is
greedy decoding (the same code path, so both are tested by one reference). Sequences start with [CLS] and
end at [SEP], as the caption loss trains them; tokens the decoder must never emit (padding, [CLS], [MASK],
[UNK]) are banned. The loop stops early once no live beam can beat the finished ones (as T5X does).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vlm_jax.data import tokenizer
from vlm_jax.models import vlm
from vlm_jax.models.layers import repeat_encoded

BANNED_IDS = (tokenizer.PAD_ID, tokenizer.CLS_ID, tokenizer.MASK_ID, tokenizer.UNK_ID)
NEG_INF = -1.0e9  # finite, so sums of impossible scores stay comparable and never become NaN


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's ((5 + length) / 6) ** alpha: alpha 0 ranks by total log-probability, larger favours longer."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree, beam_index: jax.Array, batch: int, beams: int):
    """Rows of every [..., B*K, ...] leaf (batch axis after any scanned-layer axis) reordered by
    beam_index [B, K] (which beam of the same example each new beam continues)."""
    flat = (beam_index + jnp.arange(batch)[:, None] * beams).reshape(-1)

    def gather(path, x):
        if x.ndim == 0 or path[-1].key == "cache_index":
            return x
        axis = x.ndim - 4 if path[-1].key in ("cached_key", "cached_value") else 0
        return jnp.take(x, flat, axis=axis)
    return jax.tree_util.tree_map_with_path(gather, tree)


def beam_search(step: Callable, cache, batch: int, *, max_len: int, beam_size: int = 1, alpha: float = 0.6,
                min_len: int = 0, bos_id: int = tokenizer.CLS_ID, eos_id: int = tokenizer.SEP_ID,
                banned_ids: tuple[int, ...] = BANNED_IDS) -> tuple[jax.Array, jax.Array]:
    """The best sequence per example and its length-normalised log-probability.

    step(tokens [B*K, 1], cache) -> (logits [B*K, 1, V], cache); `cache` is sized for B*K rows and max_len
    positions. At least `min_len` tokens come before the end token (BLIP's min_length: an undertrained
    decoder otherwise ends at once, since one end token outscores any longer guess). Returns tokens
    [B, max_len] ([CLS] ... [SEP] then padding 0, or cut at max_len without [SEP]) and scores [B].
    """
    if max_len < 2 or beam_size < 1 or not 0 <= min_len < max_len - 1:
        raise ValueError(f"need max_len >= 2, beam_size >= 1 and 0 <= min_len < max_len - 1, got {max_len}, "
                         f"{beam_size} and {min_len}")
    k = beam_size
    seqs = jnp.zeros((batch, k, max_len), jnp.int32).at[:, :, 0].set(bos_id)
    # only the first beam is live at the start, so the K beams do not all repeat the same expansion
    live_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    done_seqs = jnp.zeros_like(seqs)
    done_scores = jnp.full((batch, k), NEG_INF, jnp.float32)

    def cond(carry):
        index, _, live_logp, _, done_scores, _ = carry
        # the best a live beam can still reach is its current log-probability at the longest length
        best_live = live_logp[:, 0] / length_penalty(jnp.array(max_len - 1), alpha) if alpha > 0 else live_logp[:, 0]
        can_improve = jnp.any(best_live > done_scores[:, -1])
        return (index < max_len - 1) & can_improve

    def body(carry):
        index, seqs, live_logp, done_seqs, done_scores, cache = carry
        tokens = jax.lax.dynamic_slice_in_dim(seqs, index, 1, axis=2).reshape(batch * k, 1)
        logits, cache = step(tokens, cache)
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32))
        logp = logp.at[:, jnp.array(banned_ids)].set(NEG_INF)
        logp = logp.at[:, eos_id].set(jnp.where(index < min_len, NEG_INF, logp[:, eos_id]))
        vocab = logp.shape[-1]
        candidates = (live_logp[:, :, None] + logp.reshape(batch, k, vocab)).reshape(batch, k * vocab)
        # 2K candidates always hold K that do not end here, so the live set stays full
        cand_logp, flat = jax.lax.top_k(candidates, 2 * k)
        beam, token = flat // vocab, flat % vocab
        cand_seqs = jnp.take_along_axis(seqs, beam[:, :, None], axis=1)
        cand_seqs = jax.lax.dynamic_update_slice_in_dim(cand_seqs, token[:, :, None], index + 1, axis=2)
        ends = (token == eos_id) | (index + 2 == max_len)  # a beam that fills the last position is finished too
        possible = cand_logp > NEG_INF / 2  # not continued from a placeholder beam or a banned token
        # finished: merge the candidates that ended here with the ones kept so far
        ended_scores = jnp.where(ends & possible, cand_logp / length_penalty(index + 1, alpha), NEG_INF)
        all_scores = jnp.concatenate([done_scores, ended_scores], axis=1)
        all_seqs = jnp.concatenate([done_seqs, cand_seqs], axis=1)
        done_scores, keep = jax.lax.top_k(all_scores, k)
        done_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
        # live: the best K candidates that did not end
        live_logp, keep = jax.lax.top_k(jnp.where(ends, NEG_INF, cand_logp), k)
        seqs = jnp.take_along_axis(cand_seqs, keep[:, :, None], axis=1)
        cache = _gather_beams(cache, jnp.take_along_axis(beam, keep, axis=1), batch, k)
        return index + 1, seqs, live_logp, done_seqs, done_scores, cache

    carry = (jnp.array(0, jnp.int32), seqs, live_logp, done_seqs, done_scores, cache)
    # every example has finished beams when the loop ends: the last position finishes all live beams
    _, _, _, done_seqs, done_scores, _ = jax.lax.while_loop(cond, body, carry)
    return done_seqs[:, 0], done_scores[:, 0]


def generate_captions(model: vlm.VLM, variables: dict, video: jax.Array, audio_wave: jax.Array | None, *,
                      max_len: int, beam_size: int = 1, alpha: float = 0.6,
                      min_len: int = 0) -> tuple[jax.Array, jax.Array]:
    """Captions for a batch of clips with a VLM's caption decoder: (tokens [B, max_len], scores [B]).

    Jit the call: the towers run once, then `beam_search` steps the cached decoder on every clip's beams.
    """
    encoded, audio = model.apply(variables, video, audio_wave, method=vlm.VLM.encode_video)
    batch = video.shape[0]
    encoded, audio = repeat_encoded(encoded, beam_size), repeat_encoded(audio, beam_size)
    decoder = vlm.caption_decoder(model.config, decode=True)
    params = variables["params"]["caption_decoder"]
    cache = decoder.init_cache(params, encoded, audio, max_len=max_len)

    def step(tokens, cache):
        logits, mutated = decoder.apply({"params": params, "cache": cache}, tokens, encoded, audio, mutable=["cache"])
        return logits, mutated["cache"]
    return beam_search(step, cache, batch, max_len=max_len, beam_size=beam_size, alpha=alpha, min_len=min_len)
