"""From a (source, scene) draw to a sample dict, and the dataset that builds a mixing plan's draws.

Sample dict (docs/ARCHITECTURE.md): ``images`` [V, 3, H, W], ``alpha`` [V, 1, H, W], ``c2w`` [V, 4, 4],
``fxfycxcy`` [V, 4], ``index`` [V, 2] long (view_idx, scene_idx), ``background`` [3], ``source``, ``kind``, ``rig``,
``scene_id``; diffusion adds ``ref_images`` [1, 3, H, W], ``ref_alpha``, ``ref_c2w``, ``ref_fxfycxcy``, ``ref_view``;
reconstruction adds ``num_input_views``. A source with ``observed`` views (a realistic procedural source with
``truth: clean``) adds what the model sees instead of the views: ``input_images`` / ``input_alpha`` ([1, ...] the
reference for diffusion, [num_input_views, ...] the inputs for reconstruction), the views stay the truth. Each built
sample also carries ``skipped``: the draws skipped (bad samples, ``on_bad_sample: skip``) in its place, so the main
process can count them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.io import SampleError, normalize_scene_cameras, validate_cameras
from datamodules.mixing import Draw, MixingPlan, MixingSampler, rank_and_world
from datamodules.prepare import prepare_views
from datamodules.sources import Source
from datamodules.views import diffusion_views, reconstruction_views
from geometry.rig import Rig

STAGES = ("diffusion", "reconstruction")
SETUP_RIG_CHECK_SCENES = 16  # scenes of a source with camera files whose cameras setup compares with the rig


class SourceRigError(ValueError):
    """A source whose cameras cannot match the diffusion stage's rig (raised at DataModule setup)."""


@dataclasses.dataclass
class SceneBuilder:
    """Turns one scene of a source into a sample for ``stage`` (module docstring)."""

    stage: str
    rig: Rig
    image_size: int
    num_views: int = 8
    num_input_views: int = 4
    reference_view: str = "fixed"
    reference_index: int = 0
    rig_tolerance_deg: float = 2.0
    rig_distance_tolerance: float = 0.1
    normalize_cameras: bool = False
    target_radius: float = 2.7
    center_crop: bool = False
    center_fill: float = 0.6
    supervise_inputs: bool = False  # reconstruction: the supervision views include the inputs (view overlap)
    input_views: str = "random"  # reconstruction: how the inputs are drawn (datamodules.views: random | spread | first)
    extra_views: int = 0  # diffusion: after the rig's views, also the scene's next ``extra_views`` views as targets
    # (cameras no rig view has: the chained evaluation's held-out cameras, tools.evaluate --heldout-views)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")

    def select(self, num_data_views: int, rng: np.random.Generator, c2w: Tensor | None = None
               ) -> tuple[list[int], int | None]:
        """(views of the sample, reference view or None); ``c2w``: the scene's cameras (``input_views: spread``)."""
        if self.stage == "diffusion":
            ref, targets = diffusion_views(num_data_views, self.rig.num_views, self.reference_view,
                                           self.reference_index, rng)
            n = self.rig.num_views
            return targets + list(range(n, min(n + self.extra_views, num_data_views))), ref
        return reconstruction_views(num_data_views, self.num_views, self.num_input_views, rng, self.input_views,
                                    c2w), None

    def rig_mismatch(self, c2w: Tensor, where: str) -> str | None:
        """Diffusion: what keeps the scene's first rig.num_views cameras c2w from matching the rig (the worst view, its
        angle and distance difference, then the per-view table), or None when they match within the tolerance."""
        diff = self.rig.compare_cameras(c2w[: self.rig.num_views], name=where, angle_tol_deg=self.rig_tolerance_deg,
                                        dist_tol=self.rig_distance_tolerance)
        if diff.ok:
            return None
        worst = diff.worst_view()
        what = (f"worst view {worst.view!r} differs by {max(worst.angle_deg, worst.rotation_deg):.2f} deg "
                f"(distance diff {diff.worst_distance:.3f})") if worst else "; ".join(diff.problems)
        return (f"cameras do not match rig {self.rig.name!r} within {self.rig_tolerance_deg} deg / "
                f"{self.rig_distance_tolerance}: {what}\n{diff}")

    def check_rig(self, c2w: Tensor, where: str) -> None:
        """Diffusion: the scene's first rig.num_views cameras must match the rig; SampleError otherwise."""
        problem = self.rig_mismatch(c2w, where)
        if problem is not None:
            raise SampleError(f"{where}: {problem}")

    def scene_c2w(self, source: Source, scene: int) -> tuple[Any, Tensor]:
        """(the scene's SceneCameras, its c2w as the sample uses them: validated, normalized when asked)."""
        cams = source.cameras(scene)
        validate_cameras(cams.c2w, cams.fxfycxcy, cams.where)
        c2w = cams.c2w
        if self.normalize_cameras:
            c2w, _, _ = normalize_scene_cameras(c2w, self.target_radius, source.up_axis or self.rig.up_axis,
                                                self.rig.up_axis)
        return cams, c2w

    def check_source_rig(self, source: Source, max_scenes: int = SETUP_RIG_CHECK_SCENES) -> None:
        """Diffusion, at DataModule setup: refuse (:class:`SourceRigError`, naming the source, the view and the
        angle) a source whose cameras cannot match the stage's rig. A source whose cameras come from a rig
        (procedural, facelift_mvdiffusion) is checked through that rig; one with camera files through up to
        ``max_scenes`` scenes spread evenly over it (the first and last included; the per-draw check stays for the
        others). A scene whose cameras cannot be read, or that has fewer views than the rig, is left to the draw
        (``on_bad_sample``). Reconstruction: nothing to check (its cameras are the data's own)."""
        if self.stage != "diffusion" or len(source) == 0:
            return
        own_rig = getattr(source, "rig", None)
        if isinstance(own_rig, Rig):
            c2w, _ = own_rig.cameras(dtype=torch.float64)
            checks = [(f"its rig {own_rig.name!r}", c2w)]
        else:
            picks = sorted({round(x) for x in np.linspace(0, len(source) - 1, min(max_scenes, len(source)))})
            checks = []
            for i in picks:
                try:
                    cams, c2w = self.scene_c2w(source, i)
                except SampleError:
                    continue
                if len(c2w) >= self.rig.num_views:
                    checks.append((cams.where, c2w))
        for where, c2w in checks:
            problem = self.rig_mismatch(c2w, where)
            if problem is not None:
                head, _, table = problem.partition("\n")
                raise SourceRigError(f"source {source.name!r} cannot feed the diffusion stage: {where}: {head} "
                                     "(python -m tools.rig check shows each camera; python -m tools.rig derive makes a "
                                     f"rig from the lab's cameras)\n{table}")

    def build(self, source: Source, scene: int, rng: np.random.Generator) -> dict[str, Any]:
        cams, c2w = self.scene_c2w(source, scene)
        where = cams.where
        needed = self.rig.num_views + self.extra_views if self.stage == "diffusion" else self.num_views
        if len(c2w) < needed:  # a bad sample (skip mode skips it), not a configuration error
            what = (f"rig {self.rig.name!r} has {self.rig.num_views}" + (
                f" and {self.extra_views} more are asked" if self.extra_views else "")
                if self.stage == "diffusion" else f"num_views is {needed}")
            raise SampleError(f"{where}: the scene has {len(c2w)} views, {what}")
        if self.stage == "diffusion":
            self.check_rig(c2w, where)
        views, ref = self.select(len(c2w), rng, c2w)
        wanted = ([ref] if ref is not None else []) + views
        observed_rng = copy.deepcopy(rng) if source.observed is not None else None  # same background as the truth
        prepared = prepare_views(source, scene, cams, wanted, self.image_size, rng=rng, center_crop=self.center_crop,
                                 center_fill=self.center_fill)
        images, alpha, k, bg = prepared.images, prepared.alpha, prepared.fxfycxcy, prepared.background
        sel = prepared.rows(views)
        sample: dict[str, Any] = {
            "images": images[sel].contiguous(), "alpha": alpha[sel].contiguous(), "c2w": c2w[views].float(),
            "fxfycxcy": k[sel].float(),
            "index": torch.stack([torch.tensor(views), torch.full((len(views),), scene)], dim=-1).long(),
            "background": bg.float(), "source": source.name, "kind": source.sample_kind, "rig": self.rig.name,
            "rig_fingerprint": self.rig.fingerprint,
            "scene_id": cams.scene_id,
        }
        if ref is not None:
            r = int(prepared.rows([ref])[0])
            sample.update({"ref_images": images[r : r + 1].clone(), "ref_alpha": alpha[r : r + 1].clone(),
                           "ref_c2w": c2w[ref : ref + 1].float(), "ref_fxfycxcy": k[r : r + 1].float(),
                           "ref_view": torch.tensor(ref, dtype=torch.long)})
        else:
            sample["num_input_views"] = torch.tensor(self.num_input_views, dtype=torch.long)
            sample["supervise_all_views"] = torch.tensor(self.supervise_inputs)
        if source.observed is not None:  # what the model sees: the captures of the same views (module docstring)
            seen = prepare_views(source.observed, scene, cams, wanted, self.image_size, rng=observed_rng,
                                 center_crop=self.center_crop, center_fill=self.center_fill)
            rows = seen.rows([ref] if ref is not None else views[: self.num_input_views])
            sample["input_images"] = seen.images[rows].contiguous()
            sample["input_alpha"] = seen.alpha[rows].contiguous()
        return sample


def _model_input(sample: dict[str, Any], key: str) -> Tensor:
    """A sample's default ``input_images`` / ``input_alpha``: the clean reference (diffusion) or input views."""
    if "ref_images" in sample:
        return sample["ref_images" if key == "input_images" else "ref_alpha"]
    vin = int(sample["num_input_views"])
    return sample["images" if key == "input_images" else "alpha"][:vin]


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (leading B); other values become lists; ``skipped`` lists are concatenated. When only some
    samples carry ``input_images`` / ``input_alpha`` (a source with observed views mixed with others), the others get
    their default model input (the clean reference / input views)."""
    for key in ("input_images", "input_alpha"):
        if any(key in s for s in samples) and not all(key in s for s in samples):
            samples = [s if key in s else {**s, key: _model_input(s, key)} for s in samples]
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key == "skipped":
            out[key] = [x for v in vals for x in v]
        elif isinstance(vals[0], Tensor):
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out


class MixedSceneDataset(Dataset):
    """This rank's share of a MixingPlan's epochs as sample dicts: ``dataset[Draw]`` builds one draw.

    Map-style: the keys come from :meth:`sampler` (a :class:`MixingSampler`, in the main process), so the samples of
    an epoch and their order are the same for any ``num_workers`` and workers need no epoch state. For direct use,
    ``dataset[i]`` / ``iter(dataset)`` / :meth:`draws` read the epoch set by :meth:`set_epoch`.

    Args:
        sources: the sources.  indices: per source, the scene indices it may draw (train or held-out part).
        builder: SceneBuilder.  num_samples: draws per epoch over all ranks.  on_bad_sample: "raise" | "skip".
        augment: ``f(sample, key) -> sample`` applied to each built sample (in the worker that builds it), ``key`` an
            int fixed by (seed, epoch, source, scene position, occurrence): a draw is augmented the same way for any
            world size, batch size or ``num_workers``, and a resumed run repeats the uninterrupted run's ops.
    """

    def __init__(self, sources: list[Source], indices: list[np.ndarray], builder: SceneBuilder, num_samples: int,
                 seed: int = 0, on_bad_sample: str = "raise", epoch: int = 0, max_retries: int = 32,
                 augment: Callable[[dict[str, Any], int], dict[str, Any]] | None = None) -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.sources, self.indices, self.builder = sources, [np.asarray(i) for i in indices], builder
        self.num_samples, self.seed, self.on_bad_sample = int(num_samples), int(seed), on_bad_sample
        self.epoch, self.max_retries, self.augment = int(epoch), int(max_retries), augment
        self.plan = MixingPlan([len(i) for i in self.indices], [s.weight for s in sources], seed)
        self._draws: tuple[tuple[int, int, int], np.ndarray] | None = None  # draws() of (epoch, rank, world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.plan.per_rank(self.num_samples, rank_and_world()[1])

    def sampler(self, shuffle: bool = True, start_fn: Callable[[int], tuple[int, int]] | None = None) -> MixingSampler:
        """The sampler that streams this dataset's draws (see :class:`MixingSampler`)."""
        return MixingSampler(self.plan, self.num_samples, shuffle, start_fn)

    def draws(self) -> np.ndarray:
        """This rank's draws of the current epoch: [n, 3] (source, scene position, occurrence)."""
        rank, world = rank_and_world()
        key = (self.epoch, rank, world)
        if self._draws is None or self._draws[0] != key:  # dataset[i] in a loop need not redo the plan each time
            self._draws = (key, self.plan.draws(self.epoch, self.num_samples, rank, world))
        return self._draws[1]

    def __getitem__(self, key: Draw | int) -> dict[str, Any]:
        if not isinstance(key, Draw):
            rank, world = rank_and_world()
            k, pos, t = (int(v) for v in self.draws()[int(key)])
            key = Draw(self.epoch, k, pos, t, rank, world)
        return self.sample(key)

    def sample(self, draw: Draw) -> dict[str, Any]:
        """Build ``draw``; with on_bad_sample=skip, bad scenes are recorded in ``skipped`` and replaced by the next
        scenes of the draw's slot's share of the source."""
        epoch, k, pos, t = int(draw.epoch), int(draw.source), int(draw.pos), int(draw.occurrence)
        share = self.plan.share(epoch, k, int(draw.slot), int(draw.num_slots))
        start = int(np.nonzero(share == pos)[0][0]) if (share == pos).any() else 0
        skipped: list[dict[str, str]] = []
        src = self.sources[k]
        for attempt in range(min(self.max_retries, len(share)) if self.on_bad_sample == "skip" else 1):
            p = int(share[(start + attempt) % len(share)]) if attempt else pos
            scene = int(self.indices[k][p])
            rng = np.random.default_rng([self.seed, epoch, k, p, t])
            try:
                out = self.builder.build(src, scene, rng)
            except SampleError as e:
                if self.on_bad_sample == "raise":
                    raise SampleError(f"source {src.name!r} scene {scene}: {e}") from None
                skipped.append({"source": src.name, "scene": str(scene), "problem": str(e).split("\n")[0],
                                "reason": e.reason})
                continue
            if self.augment is not None:
                key = np.random.SeedSequence([self.seed, epoch, k, p, t]).generate_state(1)[0]
                out = self.augment(out, int(key))
            out["skipped"] = skipped
            return out
        raise SampleError(f"source {src.name!r}: {len(skipped)} consecutive bad samples, last: "
                          f"{skipped[-1]['problem'] if skipped else '?'}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = rank_and_world()
        for k, pos, t in self.draws():
            yield self.sample(Draw(self.epoch, int(k), int(pos), int(t), rank, world))


__all__ = ["SETUP_RIG_CHECK_SCENES", "MixedSceneDataset", "SceneBuilder", "SourceRigError", "collate_samples",
           "rank_and_world"]
