"""Audio tower: a log-mel frontend in JAX and a Transformer over time patches of the spectrogram.

The mel filterbank uses the HTK mel scale (mel = 2595 log10(1 + f / 700)) with unnormalised
triangles of peak 1 on the linear-frequency axis, as torchaudio's default `melscale_fbanks`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.layers import Dtype, Encoded, LearnedPositions, Transformer, dense, layer_norm

LOG_FLOOR = 1e-6  # added before the log so silence maps to log(1e-6) instead of -inf

SIZES = {
    "tiny": {"n_mels": 32, "patch_frames": 8, "width": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128},
    "small": {"n_mels": 64, "patch_frames": 4, "width": 256, "depth": 4, "num_heads": 4, "mlp_dim": 1024},
    "base": {"n_mels": 64, "patch_frames": 4, "width": 384, "depth": 6, "num_heads": 6, "mlp_dim": 1536},
}


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.cache
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] HTK triangular filters; built once per setting, in numpy."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
                         f"sample_rate={sample_rate}")
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_hz[:, None] - left) / (center - left)
    falling = (right - bin_hz[:, None]) / (right - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(waveform: jax.Array, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160, n_mels: int = 64,
            f_min: float = 0.0, f_max: float = 8000.0) -> jax.Array:
    """[B, S] waveform -> [B, 1 + S // hop, n_mels] natural-log mel power, float32.

    Frames are centred (n_fft // 2 zeros padded on each side) and weighted by a periodic Hann window,
    so any length S >= 1 works and frame t describes the audio around sample t * hop.
    """
    waveform = jnp.asarray(waveform, jnp.float32)
    padded = jnp.pad(waveform, ((0, 0), (n_fft // 2, n_fft // 2)))
    num_frames = 1 + waveform.shape[1] // hop
    starts = np.arange(num_frames)[:, None] * hop
    frames = padded[:, starts + np.arange(n_fft)[None, :]]  # [B, frames, n_fft]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic, as used for spectral analysis
    power = jnp.abs(jnp.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, float(f_min), float(f_max)))
    return jnp.log(mel + LOG_FLOOR)


class LogMel(nn.Module):
    """Parameter-free frontend: 25 ms Hann windows every 10 ms, mel bins up to Nyquist."""
    sample_rate: int = 16000
    n_mels: int = 64

    def __call__(self, waveform: jax.Array) -> jax.Array:
        return log_mel(waveform, self.sample_rate, n_fft=self.sample_rate * 25 // 1000, hop=self.sample_rate // 100,
                       n_mels=self.n_mels, f_max=self.sample_rate / 2)


class AudioTransformer(nn.Module):
    """Log-mel -> patches of `patch_frames` frames x all mels -> Dense -> positions -> Transformer.

    A clip of S samples gives ceil((1 + S // hop) / patch_frames) tokens; the last patch is topped up
    with silence. Positions are learned up to `max_patches` (1024 patches of 4 frames is 41 s).
    """
    sample_rate: int = 16000
    n_mels: int = 64
    patch_frames: int = 4
    width: int = 384
    depth: int = 6
    num_heads: int = 6
    mlp_dim: int = 1536
    dropout: float = 0.0
    max_patches: int = 1024
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array, *, train: bool = False) -> Encoded:
        """audio: [B, S] float waveform in [-1, 1] at `sample_rate`."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        spectrogram = LogMel(self.sample_rate, self.n_mels)(audio)  # [B, F, n_mels]
        batch, frames, _ = spectrogram.shape
        num_patches = -(-frames // self.patch_frames)
        if num_patches > self.max_patches:
            raise ValueError(f"{audio.shape[1]} samples make {num_patches} patches, more than max_patches "
                             f"{self.max_patches}")
        spectrogram = jnp.pad(spectrogram, ((0, 0), (0, num_patches * self.patch_frames - frames), (0, 0)),
                              constant_values=np.log(LOG_FLOOR))
        patches = spectrogram.reshape(batch, num_patches, self.patch_frames * self.n_mels).astype(self.dtype)
        x = dense(self.width, ("audio_mel", "embed"), name="patch_embedding", **kw)(patches)
        # Log-mel values sit far from zero (silence is log(1e-6) ~ -14); normalise before the residual stream.
        x = layer_norm(name="norm_patches", **kw)(x)
        x = LearnedPositions(self.max_patches, param_dtype=self.param_dtype, name="positions")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = Transformer(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout, name="transformer",
                        **kw)(x, deterministic=not train)
        x = layer_norm(name="norm", **kw)(x)
        return Encoded(x, jnp.mean(x.astype(jnp.float32), axis=1).astype(x.dtype), None)
