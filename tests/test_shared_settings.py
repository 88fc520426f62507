"""Settings the model shares with its data: declared once (in the data), found wherever else they are given."""

from __future__ import annotations

import pytest
import yaml

from datamodules.shared_settings import (
    SHARED_SETTINGS,
    SharedSettingError,
    check_not_on_model,
    differences,
    given_on_model,
    model_args,
)
from geometry.rig import load_rig


def test_given_on_model_finds_config_files_model_files_and_arguments(tmp_path):
    fit = tmp_path / "fit.yaml"
    fit.write_text(yaml.safe_dump({"model": {"class_path": "X", "init_args": {"rig": "a", "lr": 1.0}},
                                   "data": {"init_args": {"rig": "a", "image_size": 8}}}))
    model_file = tmp_path / "model.yaml"
    model_file.write_text(yaml.safe_dump({"class_path": "X", "init_args": {"supervise_inputs": True}}))
    found = given_on_model(["-c", str(fit), "--model", str(model_file), "--model.init_args.image_size=16",
                            "--model.num_input_views", "2", "--data.init_args.rig", "b", "--model.init_args.lr", "3"])
    assert found == [("rig", str(fit)), ("supervise_inputs", str(model_file)),
                     ("image_size", "--model.init_args.image_size"), ("num_input_views", "--model.num_input_views")]
    assert given_on_model(["--config", str(tmp_path / "absent.yaml"), "--data.init_args.image_size", "4"]) == []
    with pytest.raises(SharedSettingError, match=r"rig \(in .*fit.yaml\).*declared once, in the data"):
        check_not_on_model(["-c", str(fit)])


def test_model_args_fill_in_the_datas_shared_settings_for_the_models_stage():
    cfg = {"model": {"init_args": {"lr": 1.0}},
           "data": {"init_args": {"stage": "diffusion", "rig": "r", "image_size": 8, "num_input_views": 2}}}
    assert model_args(cfg) == {"lr": 1.0, "rig": "r", "image_size": 8}  # the diffusion model takes no input count
    assert model_args(cfg, stage="reconstruction") == {"lr": 1.0, "rig": "r", "image_size": 8, "num_input_views": 2}
    assert set(SHARED_SETTINGS) == {"rig", "image_size", "num_input_views", "supervise_inputs"}


def test_differences_name_every_shared_key_and_know_a_rig_by_its_cameras(tmp_path):
    rig_file = tmp_path / "rig.json"
    rig_file.write_text(__import__("json").dumps(load_rig("mouse_oblique20_6view").to_dict()))
    model = {"rig": "mouse_oblique20_6view", "image_size": 128, "num_input_views": 4, "supervise_inputs": True, "lr": 1}
    assert differences(model, {**model, "rig": str(rig_file), "lr": 2}) == {}  # same cameras; lr is not shared
    data = {"rig": "facelift_6view", "image_size": 256, "num_input_views": 4, "supervise_inputs": False}
    assert differences(model, data) == {"rig": ("mouse_oblique20_6view", "facelift_6view"), "image_size": (128, 256),
                                        "supervise_inputs": (True, False)}
