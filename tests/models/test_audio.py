"""Audio: the log-mel frontend against independent numpy/scipy references, and the AudioTransformer contract."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models import audio

RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 64


def reference_filterbank(n_mels=N_MELS, f_max=8000.0):
    """HTK triangles written independently: each filter interpolated between its three edge frequencies."""
    to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(0.0, to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    bin_hz = np.fft.rfftfreq(N_FFT, 1.0 / RATE)
    bank = np.stack([np.interp(bin_hz, edges[m:m + 3], [0.0, 1.0, 0.0]) for m in range(n_mels)], axis=1)
    return bank, edges[1:-1]


def tone(hz, seconds=0.5, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


def test_filterbank_matches_independent_htk_construction():
    bank, _ = reference_filterbank()
    np.testing.assert_allclose(audio.mel_filterbank(RATE, N_FFT, N_MELS, 0.0, 8000.0), bank, atol=1e-6)


def test_log_mel_matches_scipy_stft():
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(4321) + tone(700, 4321 / RATE)).astype(np.float32)
    _, _, spectrum = scipy.signal.stft(wave, fs=RATE, window="hann", nperseg=N_FFT, noverlap=N_FFT - HOP,
                                       boundary="zeros", padded=False, detrend=False)
    window_sum = scipy.signal.get_window("hann", N_FFT).sum()  # undo scipy's 'spectrum' scaling
    power = np.abs(spectrum.T * window_sum) ** 2  # [frames, freqs]
    expected = np.log(power @ reference_filterbank()[0] + 1e-6)
    got = np.asarray(audio.log_mel(wave[None]))[0]
    assert got.shape == expected.shape == (1 + 4321 // HOP, N_MELS)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("hz", [200, 1000, 1500])
def test_a_pure_tone_peaks_in_its_mel_bin(hz):
    _, centers = reference_filterbank()
    nearest = np.argmin(np.abs(centers - hz))
    # Pure-numpy STFT of the steady middle frame, then the reference filterbank.
    frame = tone(hz)[4000:4000 + N_FFT] * (np.hanning(N_FFT + 1)[:-1])
    assert np.argmax(np.abs(np.fft.rfft(frame)) ** 2 @ reference_filterbank()[0]) == nearest
    spectrogram = np.asarray(audio.log_mel(tone(hz)[None]))[0]
    assert np.all(np.argmax(spectrogram[3:-3], axis=-1) == nearest)


def test_log_mel_of_silence_is_the_floor_and_any_length_works():
    for samples in (1, 159, 160, 32000):
        out = audio.log_mel(np.zeros((2, samples), np.float32))
        assert out.shape == (2, 1 + samples // HOP, N_MELS)
        np.testing.assert_allclose(out, np.log(1e-6), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    model = audio.AudioTransformer(**audio.SIZES["tiny"])
    waves = np.stack([np.zeros(32000, np.float32), tone(1500, 2.0)])
    variables = jax.jit(model.init)(jax.random.key(0), waves)
    return model, waves, variables, jax.jit(model.apply)


def test_shapes_for_two_seconds_and_other_lengths(tiny):
    model, waves, variables, apply = tiny
    out = apply(variables, waves)
    patches = -(-(1 + 32000 // HOP) // model.patch_frames)
    assert out.tokens.shape == (2, patches, model.width) and out.pooled.shape == (2, model.width)
    assert out.mask is None
    short = model.apply(variables, waves[:, :1000])
    assert short.tokens.shape == (2, 1, model.width)
    with pytest.raises(ValueError, match="max_patches"):
        audio.AudioTransformer(**audio.SIZES["tiny"], max_patches=4).init(jax.random.key(0), waves)


def test_silence_and_a_beep_differ(tiny):
    _, waves, variables, apply = tiny
    pooled = np.asarray(apply(variables, waves).pooled)
    assert np.isfinite(pooled).all()
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-2


def test_vmap_matches_batch_and_grad_reaches_every_leaf(tiny):
    model, waves, variables, apply = tiny
    batched = apply(variables, waves).pooled
    mapped = jax.jit(jax.vmap(lambda w: model.apply(variables, w[None]).pooled[0]))(waves)
    np.testing.assert_allclose(mapped, batched, atol=1e-5)
    weights = np.random.default_rng(0).normal(size=batched.shape)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, waves).pooled * weights)))(
        nn.meta.unbox(variables)["params"])
    assert_gradients_finite_and_nonzero(grads)


def test_every_leaf_has_logical_axes(tiny):
    _, _, variables, _ = tiny
    assert_all_leaves_named(variables)


def test_bf16_compute_runs(tiny):
    _, waves, variables, _ = tiny
    out = audio.AudioTransformer(**audio.SIZES["tiny"], dtype=jnp.bfloat16).apply(variables, waves)
    assert out.tokens.dtype == jnp.bfloat16 and np.isfinite(out.pooled.astype(np.float32)).all()
