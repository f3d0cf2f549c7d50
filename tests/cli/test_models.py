"""`vlm_jax.cli.models` as a user runs it: `vlm models summary`."""

from conftest import run_vlm


def test_models_summary_counts_parameters_and_flops():
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--config.model.video.name=cnn2d",
                     "--config.model.audio.name", "None")
    lines = result.stdout.splitlines()
    assert lines[0] == "video=cnn2d, text=bert, audio=None, fusion=cross_attention"
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[3:] if line[:1].isalpha()
              and len(line.split()) >= 2 and line.split()[1].replace(",", "").isdigit()}
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert "audio_encoder" not in counts and counts["video_encoder"] == 26_128
    flops = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1]) for line in lines
             if line.startswith("  ")}
    assert 0 < flops["video tower"] < flops["whole model (every head)"]
