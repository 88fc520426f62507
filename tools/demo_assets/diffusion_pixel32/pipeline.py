"""diffusers' custom-pipeline entry of this mvlift diffusion export (needs mvlift installed):
DiffusionPipeline.from_pretrained(THIS_FOLDER, custom_pipeline=THIS_FOLDER, trust_remote_code=True)."""
from lightning_modules.diffusion.mv_pipeline import MVLiftPipeline  # noqa: F401
