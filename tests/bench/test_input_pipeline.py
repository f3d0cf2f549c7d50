"""`vlm bench`'s input section: real mp4 decoding (no timing asserted)."""

from vlm_jax.bench import input_pipeline, presets


def test_mp4_decoding_reads_real_files():
    """Four written H.264 + AAC files, each decoded to the tiny preset's clip (no timing asserted)."""
    results = input_pipeline.mp4_decoding(quick=True, config=presets.load_config("tiny", "data"))
    assert set(results) == {"input/mp4/clips_per_s"} and results["input/mp4/clips_per_s"] > 0
