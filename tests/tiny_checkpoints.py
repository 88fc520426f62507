"""Tiny random checkpoints of both stages for the tool tests: Lightning ``.ckpt`` files (written by a real Trainer, as
``tools.fit`` writes them) and export folders. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

SIZE = 16  # px for both stages


def diffusion_module(rig: str):
    from lightning_modules.diffusion.module import DiffusionModule

    return DiffusionModule(rig=rig, view_embeddings="learned", view_init="scratch", image_size=SIZE, view_tokens=4)


def reconstruction_module(rig: str, **kw):
    from lightning_modules.reconstruction.module import ReconstructionModule

    args = {"rig": rig, "image_size": SIZE, "num_input_views": 2, "width": 32, "depth": 1, "head_dim": 16,
            "rasterizer": "torch"}
    args.update(kw)
    return ReconstructionModule(**args)


def save_lightning_checkpoint(module: pl.LightningModule, path: Path, callbacks: list | None = None) -> Path:
    """What a Trainer writes for ``module`` (hyper-parameters, state dict, the module's ``mvlift`` metadata)."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks or [])
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def diffusion_checkpoint(path: Path, rig: str) -> Path:
    return save_lightning_checkpoint(diffusion_module(rig), path)


def diffusion_export(path: Path, rig: str) -> Path:
    return diffusion_module(rig).export(path)


def reconstruction_checkpoint(path: Path, rig: str) -> Path:
    return save_lightning_checkpoint(reconstruction_module(rig), path)


def reconstruction_export(path: Path, rig: str) -> Path:
    return reconstruction_module(rig).export(path)
