"""Model cards are huggingface_hub ModelCards with metadata (library_name, pipeline_tag, tags, license), and a run's
exports are written after the validation of their step, so their cards carry its metrics (issue 27: the demo's cards
said "None recorded")."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard
from tiny_checkpoints import reconstruction_export

from callbacks.run_layout import RunPaths

pytest.importorskip("datamodules.datamodule")
from test_fit_cli import _config

from tools.fit import main


def test_an_export_card_has_hub_metadata(tmp_path):
    card = ModelCard.load(reconstruction_export(tmp_path / "export", "facelift_6view") / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "mvlift" and data["pipeline_tag"] == "image-to-3d"
    assert data["license"] == "apache-2.0"
    assert {"mvlift", "reconstruction", "rig:facelift_6view"} <= set(data["tags"])
    assert "# mvlift reconstruction model" in card.text


def test_every_export_of_a_run_carries_the_validation_of_its_step(tmp_path):
    cfg = _config(tmp_path, run="cards")  # validation every 2 steps, exports every 2 steps
    main(["-c", str(cfg), "--trainer.max_steps", "4"])
    paths = RunPaths(tmp_path / "runs", "cli", "cards")
    assert sorted(paths.exports()) == [2, 4]
    for step in (2, 4):
        card = ModelCard.load(paths.export_dir(step) / "README.md")
        assert "None recorded" not in card.text, f"step {step}: no metrics in the card"
        assert f"Last validation values (validation at step {step}):" in card.text
        assert "| val/psnr" in card.text
        assert card.data.to_dict()["library_name"] == "mvlift"
    assert yaml.safe_load(paths.config_path.read_text())["run"]["export_every_n_steps"] == 2


def test_push_to_hub_uploads_the_export_folder_with_its_card(tmp_path, monkeypatch):
    """No network: HfApi's two calls are recorded. MVLiftPipeline.push_to_hub keeps mvlift's card (diffusers' own
    push_to_hub would write its generic one)."""
    import huggingface_hub
    from tiny_checkpoints import diffusion_export

    from lightning_modules.artifacts import push_to_hub
    from lightning_modules.diffusion.mv_pipeline import MVLiftPipeline

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw))

    def upload_folder(self, folder_path, repo_id, **kw):
        from pathlib import Path
        files = {p.name for p in Path(folder_path).iterdir()}
        card = ModelCard.load(Path(folder_path) / "README.md")
        calls.append(("upload", repo_id, files, card.data.to_dict()["library_name"]))
        return "https://hub/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    export = reconstruction_export(tmp_path / "gslrm", "facelift_6view")
    assert push_to_hub(export, "me/gslrm") == "https://hub/commit/1"
    assert calls[0][:2] == ("create", "me/gslrm") and calls[1][0] == "upload"
    assert {"README.md", "mvlift.json", "rig.json", "model.safetensors"} <= calls[1][2] and calls[1][3] == "mvlift"
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        push_to_hub(tmp_path, "me/nothing")
    calls.clear()
    pipe = MVLiftPipeline.from_pretrained(diffusion_export(tmp_path / "diff", "facelift_6view"))
    pipe.push_to_hub("me/mvdiff")
    assert calls[1][1] == "me/mvdiff" and {"README.md", "model_index.json", "unet"} <= calls[1][2]
    assert calls[1][3] == "mvlift"
