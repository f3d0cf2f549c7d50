"""Config files: presets, typed overrides, helpful errors, validation, config.json."""

import json
from pathlib import Path

import pytest

from vlm_jax import config as config_lib
from vlm_jax.errors import UserError
from vlm_jax.models import vlm

PRETRAIN = "configs/pretrain.py"


def test_presets_load_with_the_design_keys():
    for preset in ("tiny", "small", "base"):
        flat = config_lib.flatten(config_lib.load(f"{PRETRAIN}:{preset}"))
        for key in ("seed", "data.name", "data.data_dir", "data.num_frames", "data.image_size", "train.num_steps",
                    "train.batch_size", "mesh.shape", "mesh.axes", "model.video.name", "model.text.name",
                    "model.audio.name", "model.fusion.name", "losses.contrastive"):
            assert key in flat, (preset, key)
    assert config_lib.load(PRETRAIN).preset == "tiny"


def test_overrides_are_parsed_to_the_field_type():
    config = config_lib.load(f"{PRETRAIN}:small", [
        "train.batch_size=64", "--config.data.augment.flip=false", "mesh.shape=(2, 4, 1)",
        "data.augment.min_crop_scale=1", "data.source=/videos", "model.audio.name=None"])
    assert config.train.batch_size == 64 and config.data.augment.flip is False
    assert config.mesh.shape == (2, 4, 1) and config.data.augment.min_crop_scale == 1.0
    assert config.data.source == "/videos" and config.model.audio.name is None
    remat = config_lib.load(f"{PRETRAIN}:tiny", ["model.fusion.remat=none", "model.video.vivit.remat=dots"]).model
    assert remat.fusion.remat == "none" and remat.video.vivit.remat == "dots"  # strings, not None


@pytest.mark.parametrize("override, message", [
    ("train.batch_sise=3", r"unknown config key 'train.batch_sise'; did you mean train.batch_size\b"),
    ("data.num_frame=8", r"did you mean data.num_frames"),
    ("zzz.qqq=1", r"unknown config key 'zzz.qqq'$"),
    ("train.batch_size=abc", r"'train.batch_size' expects int, got 'abc'"),
    ("data.augment.flip=maybe", r"expects bool"),
    ("mesh.shape=3", r"expects tuple"),
    ("train.batch_size", r"is not KEY=VALUE"),
    ("data.size=huge", r"data.size must be one of tiny, small, default"),
    ("data.num_frames=32", r"data.num_frames must not exceed data.build_frames"),
    ("mesh.shape=(-1, -1, 1)", r"at most one -1"),
    ("data.name=video_folder", r"data.source must name a video folder"),
    ("model.video.name=vit", r"model.video.name must be one of vivit, cnn2d, i3d, cnn_rnn, single_frame, linear"),
    ("model.audio.name=wav", r"model.audio.name must be one of audio_transformer, None \(got 'wav'\)"),
    ("model.fusion.name=sum", r"model.fusion.name must be one of dual, add,"),
    ("model.caption.name=lstm", r"model.caption.name must be one of transformer, linear"),
    ("model.video.vivit.variant=divided", r"model.video.vivit.variant must be one of joint, factorised_encoder,"),
    ("model.text.bert.remat=all", r"model.text.bert.remat must be one of none, .* \(got 'all'\)"),
    ("model.fusion.remat=some", r"model.fusion.remat must be one of"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        config_lib.load(f"{PRETRAIN}:tiny", [override])


def test_bad_file_and_preset():
    with pytest.raises(UserError, match="config file not found"):
        config_lib.load("configs/nope.py:tiny")
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        config_lib.load(f"{PRETRAIN}:huge")


def test_written_config_holds_the_chosen_encoders_only_and_reloads_equal(tmp_path):
    config = config_lib.load(f"{PRETRAIN}:small", ["seed=7", "model.video.name=cnn2d", "model.audio.name=None"])
    path = config_lib.write(config, tmp_path / "run")
    written = json.loads(path.read_text())
    assert written["seed"] == 7
    assert written["model"]["video"].keys() == {"name", "cnn2d"} and written["model"]["text"].keys() == {"name", "bert"}
    assert written["model"]["audio"] == {"name": None}
    as_json = lambda c: json.loads(json.dumps(config_lib.flatten(c)))  # tuples, nested too, become lists
    assert as_json(config_lib.load(str(path))) == as_json(config)  # `--config RUN/config.json`


@pytest.mark.parametrize("overrides, key, chosen", [
    (["model.video.vivit.depth=1", "model.video.name=cnn2d"], "model.video.vivit.depth", "'cnn2d'"),
    (["model.audio.name=None", "model.audio.audio_transformer.depth=1"], "model.audio.audio_transformer.depth",
     "None"),
])
def test_an_option_of_an_encoder_the_config_does_not_choose_is_an_error(overrides, key, chosen):
    with pytest.raises(UserError) as error:
        config_lib.load(f"{PRETRAIN}:tiny", overrides)
    assert str(error.value) == (f"config key {key} sets an option of {key.split('.')[2]}, but "
                                f"model.{key.split('.')[1]}.name is {chosen}: it would be ignored")
    config_lib.load(f"{PRETRAIN}:tiny", [*overrides, f"model.{key.split('.')[1]}.name={key.split('.')[2]}"])


USER_CONFIG = '''
from pathlib import Path
from vlm_jax import config as config_lib

def get_config(arg=None):
    config = config_lib.load_file(Path({pretrain!r})).get_config("tiny")
    {line}
    return config
'''


@pytest.mark.parametrize("line, message", [
    ("config.train.num_step = 10", "unknown config key 'train.num_step'; did you mean train.num_steps"),
    ("config.model.video.vivit.depht = 2", "unknown config key 'model.video.vivit.depht'; did you mean "
                                           "model.video.vivit.depth"),
    ("config.colour = 'red'", "unknown config key 'colour'"),
    ("config.train.batch_size = '16'", "Could not override field 'batch_size'"),  # ml_collections' own check
    ("config.train = dict(config.train, batch_size='16')", "config key train.batch_size expects int, got str '16'"),
    ("config.losses.caption = 1.0", "config key losses.caption is not a loss of train.task='pretrain' (its losses: "
                                    "contrastive, vtm, mlm, mvm)"),
    ("config.losses = {'vtm': 'high'}", "config key losses.vtm must be a number"),
])
def test_unknown_keys_and_wrong_types_in_a_config_file_name_the_key(tmp_path, line, message):
    path = tmp_path / "mine.py"
    path.write_text(USER_CONFIG.format(pretrain=str(Path(PRETRAIN).resolve()), line=line))
    with pytest.raises(UserError) as error:
        config_lib.load(str(path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_config_file_may_fill_open_blocks_and_drop_audio(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(USER_CONFIG.format(pretrain=str(Path(PRETRAIN).resolve()), line=(
        "config.optim.lr_multipliers = {'video_encoder': 0.5}; config.model.audio.name = None; "
        "config.optim.learning_rate = 1")))
    config = config_lib.load(str(path))
    assert config.optim.lr_multipliers.video_encoder == 0.5 and config.model.audio.name is None


@pytest.mark.parametrize("block, key, value, message", [
    ("train", "warmup", 5, "unknown config key 'train.warmup'"),
    ("train", "num_steps", 2.5, "config key train.num_steps expects int, got float 2.5"),
    ("optim", "learning_rate", True, "config key optim.learning_rate expects float, got bool True"),
    ("mesh", "shape", "2x4", "config key mesh.shape expects tuple, got str '2x4'"),
])
def test_an_edited_config_json_is_checked_like_a_config_file(tmp_path, block, key, value, message):
    path = config_lib.write(config_lib.load(f"{PRETRAIN}:tiny"), tmp_path)
    written = json.loads(path.read_text())
    written[block][key] = value
    path.write_text(json.dumps(written))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        config_lib.load(str(path))


def test_retrieval_audio_follows_the_audio_tower_and_needs_one():
    def resolved(*overrides):
        return vlm.retrieval_uses_audio(config_lib.load(f"{PRETRAIN}:tiny", list(overrides)).model)
    assert resolved() and resolved("model.retrieval_audio=true") and not resolved("model.retrieval_audio=false")
    assert not resolved("model.audio.name=None") and not resolved("model.audio.name=None", "model.retrieval_audio=None")
    with pytest.raises(UserError) as error:
        config_lib.load(f"{PRETRAIN}:tiny", ["model.audio.name=None", "model.retrieval_audio=true"])
    assert str(error.value) == ("config key model.retrieval_audio must not be True without an audio tower "
                                "(model.audio.name=None) (got True)")


def test_a_run_from_before_retrieval_audio_keeps_its_video_only_embedding(tmp_path):
    path = config_lib.write(config_lib.load(f"{PRETRAIN}:tiny"), tmp_path)
    written = json.loads(path.read_text())
    assert written["model"].pop("retrieval_audio") is None
    path.write_text(json.dumps(written))
    assert config_lib.load(str(path)).model.retrieval_audio is False
