"""Imported recordings against a truth the import did not make: procedural mice filmed by lab cameras calibrated in
mm, cm and m (``datamodules.procedural_recording``), imported with ``tools.import_captures``, then compared with the
truth: the same scenes whatever the unit, the fields of view of the rig, the mouse's Gaussians rendered through the
imported cameras land on the imported masks, and inconsistent recordings are rejected by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from datamodules.captures import ImportSettings, import_recording
from datamodules.procedural_recording import LAB_CAMERAS, LabCamera, render_truth, write_procedural_recording
from geometry.calibration import load_calibration
from geometry.camera_files import read_camera_file
from geometry.cameras import fov_from_focal
from geometry.rig import load_rig

SIZE, FOV = 64, 50.0  # the imported view size; the mouse rig's field of view (--fov 50 / --rig)


def record(root: Path, units: str, frames=(0,), cameras=LAB_CAMERAS) -> Path:
    write_procedural_recording(root, list(frames), units=units, cameras=cameras, size_scale=0.5)
    return root


def run_import(rec: Path, out: Path, **kw):
    cams = load_calibration(rec / "calibration.json")
    n = len(cams)
    return import_recording(cams, [rec / "images" / f"cam{v}" for v in range(n)], out,
                            [rec / "masks" / f"cam{v}" for v in range(n)],
                            settings=ImportSettings(size=SIZE, fov_deg=FOV, **kw), progress=False)


@pytest.fixture(scope="module")
def imports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("units")
    out = {}
    for units in ("mm", "cm", "m"):
        rec = record(root / units, units)
        report = run_import(rec, root / units / "imported")
        assert len(report.kept) == 1, report.summary()
        out[units] = root / units
    return out


def test_a_recording_in_mm_cm_and_m_imports_to_the_same_scenes(imports):
    scenes = {u: read_camera_file(p / "imported" / "frame_000000" / "opencv_cameras.json") for u, p in imports.items()}
    for units in ("cm", "m"):
        assert (scenes[units].c2w - scenes["mm"].c2w).abs().max() < 1e-4
        assert (scenes[units].fxfycxcy - scenes["mm"].fxfycxcy).abs().max() < 1e-4
    fovs = [fov_from_focal(float(k[0]), SIZE) for k in scenes["mm"].fxfycxcy]
    assert max(abs(f - FOV) for f in fovs) < 1.0  # the rig's field of view, not 178 deg
    d = scenes["mm"].c2w[:, :3, 3].norm(dim=-1)
    assert abs(float(d.mean()) - 2.7) < 1e-3  # one similarity: the mean distance is the radius ...
    assert float(d.max() / d.min()) == pytest.approx(3.4 / 2.0, rel=0.1)  # ... and the rig's own spread is kept
    for units, p in imports.items():
        report = json.loads((p / "imported" / "import_report.json").read_text())
        frame = report["kept_frames"][0]
        assert frame["reprojection_px512"] <= 1.5, units
        assert min(frame["hull_iou"]) >= 0.9, units
        assert report["units"] == units  # the label; the scenes are the same whatever it is


def test_the_mouse_rendered_through_the_imported_cameras_lands_on_the_imported_masks(imports):
    """The truth: the procedural mouse's Gaussians, moved into the import's world with the lab's known similarity
    and the import's recorded centre and scale, rendered through the imported cameras (8x supersampled), fall on
    the imported masks: IoU >= 0.95 and centroids within 0.3 px at 64 px in every view."""
    rec = imports["mm"]
    scene = rec / "imported" / "frame_000000"
    cams = read_camera_file(scene / "opencv_cameras.json")
    _, truth_alpha = render_truth(rec, scene)
    assert len(truth_alpha) == len(cams.c2w)
    from datamodules.photos import read_image

    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    for v in range(len(cams.c2w)):
        _, alpha = read_image(scene / "images" / f"cam_{v:03d}.png")
        a, b = truth_alpha[v, 0] > 0.5, alpha[0] > 0.5
        iou = float((a & b).sum() / (a | b).sum())
        centroid = [torch.stack([(m * xs).sum(), (m * ys).sum()]) / m.sum() for m in (a.float(), b.float())]
        assert iou > 0.95, (v, iou)
        assert float((centroid[0] - centroid[1]).abs().max()) < 0.3, (v, centroid)  # from 128-160 px frames


def test_distortion_and_frames_of_every_shape_import_exactly(tmp_path):
    cams = [LabCamera(c.azimuth, c.elevation, c.distance, c.size, c.fov_deg, c.aim,
                      (-0.25, 0.06, 0.001, -0.002, 0.0) if i in (0, 3) else ()) for i, c in enumerate(LAB_CAMERAS)]
    rec = record(tmp_path / "rec", "cm", cameras=cams)
    report = run_import(rec, tmp_path / "out")
    assert len(report.kept) == 1, report.summary()
    assert min(report.kept[0]["hull_iou"]) >= 0.9  # undistorted images agree with the pinhole cameras
    assert report.kept[0]["reprojection_px512"] <= 1.5


def test_snapping_every_camera_to_the_radius_is_measured_and_warned(tmp_path):
    rec = record(tmp_path / "rec", "mm")
    report = run_import(rec, tmp_path / "out", snap_radius=True)
    cf = read_camera_file(tmp_path / "out" / "frame_000000" / "opencv_cameras.json")
    assert torch.allclose(cf.c2w[:, :3, 3].norm(dim=-1), torch.full((6,), 2.7), atol=1e-4)
    assert report.kept[0]["reprojection_px512"] > 1.5  # distances 2.0-3.4: a dolly zoom is no similarity
    assert "WARNING: reprojection above 1.5 px" in report.summary()


@pytest.fixture(scope="module")
def two_frames(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("two") / "rec", "mm", frames=(0, 1))


def _swap_cameras(rec: Path) -> None:
    for kind in ("images", "masks"):  # the videos of cameras 0 and 5 (frames of one size) in each other's place
        a, b = rec / kind / "cam0", rec / kind / "cam5"
        a.rename(rec / kind / "tmp")
        b.rename(a)
        (rec / kind / "tmp").rename(b)


def _mask_of_another_frame(rec: Path) -> None:
    shutil.copy(rec / "masks" / "cam2" / "0001.png", rec / "masks" / "cam2" / "0000.png")


def _cameras_in_mixed_units(rec: Path) -> None:
    cal = json.loads((rec / "calibration.json").read_text())
    for cam in cal["cameras"][3:]:  # the second half's translations in cm, the first's in mm
        cam["T"] = [t / 10 for t in cam["T"]]
    (rec / "calibration.json").write_text(json.dumps(cal))


@pytest.mark.parametrize("corrupt", [_swap_cameras, _mask_of_another_frame, _cameras_in_mixed_units],
                         ids=["swapped_camera_order", "mask_of_another_frame", "calibration_in_the_wrong_unit"])
def test_inconsistent_recordings_are_rejected_by_name(two_frames, tmp_path, corrupt):
    rec = tmp_path / "rec"
    shutil.copytree(two_frames, rec)
    corrupt(rec)
    report = run_import(rec, tmp_path / "out")
    rejected = {r["frame"]: r for r in report.rejected}
    assert 0 in rejected and rejected[0]["reason"] == "inconsistent_views", report.summary()
    assert "silhouette IoU of the visual hull" in rejected[0]["detail"] or "do not meet" in rejected[0]["detail"]
    if corrupt is _mask_of_another_frame:
        assert [r["frame"] for r in report.kept] == [1]  # only the frame with the wrong mask
    assert "inconsistent_views" in report.summary()


FACELIFT_SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "facelift_sample" / "gslrm" / "sample_000"
needs_facelift = pytest.mark.skipif(not FACELIFT_SCENE.is_dir(), reason="needs ../shared/data/facelift_sample")


@needs_facelift
def test_facelift_s_own_views_and_cameras_agree_and_a_centring_bug_is_caught(tmp_path):
    """FaceLift's sample scene (32 posed RGBA renders, its camera file) read by mvlift: the visual hull of its
    alphas projects back onto every one (IoU >= 0.95). Then one view centred the way the user's converter did it
    (cropped around its alpha box and resized, intrinsics left as they were): ``tools.rig check`` names the scene."""
    from datamodules.io import crop_views
    from datamodules.photos import read_image
    from datamodules.rig_check import check_dataset
    from geometry.images import save_png
    from tools.rig import main

    report = check_dataset(FACELIFT_SCENE.parent, "facelift_6view")
    (iou,) = report["hull_iou"].values()
    assert len(iou) == 32 and min(iou) >= 0.95, iou
    scene = tmp_path / "data" / "sample_000"
    shutil.copytree(FACELIFT_SCENE, scene)
    view = scene / "images" / "cam_005.png"
    rgb, alpha = read_image(view)
    ys, xs = torch.nonzero(alpha[0] > 0.5, as_tuple=True)
    c = ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
    half = 0.5 * float(max(xs.max() - xs.min(), ys.max() - ys.min())) / 0.6  # the object at 0.6 of the frame
    box = (float(c[0]) - half, float(c[1]) - half, float(c[0]) + half, float(c[1]) + half)
    moved = crop_views(torch.cat([rgb, alpha])[None], box, rgb.shape[-1])[0]
    save_png(view, moved[:3].clamp(0, 1), moved[3:].clamp(0, 1))
    report = check_dataset(tmp_path / "data", "facelift_6view")
    (iou,) = report["hull_iou"].values()
    assert min(iou) < 0.8, iou  # the hull is carved where view 5 disagrees: several views lose their silhouette
    assert any("masks and cameras disagree" in p and "sample_000" in p for p in report["problems"])
    assert main(["check", str(tmp_path / "data"), "--rig", "facelift_6view"]) == 1  # the exit code says it


@pytest.mark.parametrize("units", ["mm", "m"])
def test_a_rig_derived_from_a_calibration_alone_recovers_the_lab_cameras(tmp_path, units):
    """``tools.rig derive CALIBRATION``: centred where the optical axes meet and scaled as one similarity, the lab's
    cameras come back at their own distances (mean 2.7) and elevations, with the calibrated field of view."""
    from tools.rig import main

    write_procedural_recording(tmp_path, [], units=units)  # the calibration only: no frames
    assert main(["derive", str(tmp_path / "calibration.json"), "--name", "lab", "--out", str(tmp_path / "lab.yaml")]) == 0
    rig = load_rig(tmp_path / "lab.yaml")
    assert rig.radius == pytest.approx(2.7, abs=1e-3)
    assert list(rig.view_distances) == pytest.approx([c.distance for c in LAB_CAMERAS], abs=0.06)
    assert list(rig.elevations_deg) == pytest.approx([c.elevation for c in LAB_CAMERAS], abs=1.5)
    assert 40 < rig.fov_deg < 56  # the cameras' own (40-55 deg across their widths), not 178
