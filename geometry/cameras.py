"""Camera conventions and camera math: the one place they are written.

Convention: OpenCV cameras (x right, y down, z forward). ``c2w`` is [..., 4, 4] camera-to-world, ``fxfycxcy`` is
[..., 4] pinhole intrinsics in pixels for the image size they travel with; pixel centres sit at (u + 0.5, v + 0.5).

Example:
    >>> import torch
    >>> c2w = look_at(torch.tensor([0.0, -2.7, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    >>> uv, depth = project_points(torch.zeros(1, 3), c2w, torch.tensor([548.99, 548.99, 256.0, 256.0]))
    >>> uv.tolist(), round(depth.item(), 3)
    ([[256.0, 256.0]], 2.7)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Blender/OpenGL cameras look down -z with y up; OpenCV looks down +z with y down: flip the camera's y and z axes.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))

UP_AXES = {"z": (0.0, 0.0, 1.0), "y": (0.0, 1.0, 0.0)}


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV camera-to-world matrix of a camera at ``eye`` looking at ``target``.

    Args:
        eye: [..., 3] camera centre.  target: [..., 3] point seen at the image centre.  up: [..., 3] world up
            (image rows run against it: y_cam points "down").
    Returns:
        c2w [..., 4, 4].
    """
    eye, target, up = _as_tensor(eye), _as_tensor(target), _as_tensor(up)
    target, up = target.to(eye), up.to(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up.expand_as(z)), dim=-1)
    y = torch.linalg.cross(z, x)
    shape = torch.broadcast_shapes(eye.shape, z.shape)[:-1]
    c2w = torch.zeros(*shape, 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = x, y, z
    c2w[..., :3, 3] = eye.expand_as(z)
    c2w[..., 3, 3] = 1.0
    return c2w


def invert_rigid(m: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4] (c2w <-> w2c) without a general matrix inverse."""
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ m[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def blender_to_opencv(c2w: Tensor) -> Tensor:
    """Blender/OpenGL c2w (camera looks down -z, y up) -> OpenCV c2w. [..., 4, 4]."""
    return c2w @ _GL_TO_CV.to(c2w)


def opencv_to_blender(c2w: Tensor) -> Tensor:
    """OpenCV c2w -> Blender/OpenGL c2w. [..., 4, 4]."""
    return c2w @ _GL_TO_CV.to(c2w)


def up_change_matrix(src: str, dst: str) -> Tensor:
    """World rotation [4, 4] taking a ``src``-up world ("y" or "z") to a ``dst``-up one.

    Y-up -> Z-up is the usual (x, y, z) -> (x, -z, y): Y-up's forward (+z, towards the viewer) becomes -y, so the
    front camera of a Y-up world at (0, 0, r) lands at (0, -r, 0) as in the Z-up FaceLift rig.
    """
    if src not in UP_AXES or dst not in UP_AXES:
        raise ValueError(f"up axis must be one of {sorted(UP_AXES)}, got {src!r} -> {dst!r}")
    y_to_z = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    if src == dst:
        return torch.eye(4)
    return y_to_z if (src, dst) == ("y", "z") else y_to_z.T.contiguous()


def change_up(c2w: Tensor, src: str, dst: str) -> Tensor:
    """Re-express c2w [..., 4, 4] from a ``src``-up world in a ``dst``-up world."""
    return up_change_matrix(src, dst).to(c2w) @ c2w


def focal_from_fov(fov_deg: float, size: float) -> float:
    """Focal length in pixels for a field of view ``fov_deg`` across ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def fov_from_focal(focal: float, size: float) -> float:
    """Field of view in degrees across ``size`` pixels for a focal length in pixels."""
    return math.degrees(2.0 * math.atan(0.5 * size / focal))


def scale_intrinsics(fxfycxcy: Tensor, src_hw: Sequence[int], dst_hw: Sequence[int]) -> Tensor:
    """Intrinsics [..., 4] of an image resized from ``src_hw`` (H, W) to ``dst_hw`` (pixel-centre exact)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=fxfycxcy.dtype, device=fxfycxcy.device)
    return fxfycxcy * scale


def crop_intrinsics(fxfycxcy: Tensor, box: Sequence[float], out_hw: Sequence[int]) -> Tensor:
    """Intrinsics [..., 4] after cropping the pixel box (x0, y0, x1, y1) and resizing it to ``out_hw`` (H, W).

    The box may extend past the image (padding). A pixel at (u, v) of the original lands at
    ((u - x0) * W / (x1 - x0), (v - y0) * H / (y1 - y0)).
    """
    x0, y0, x1, y1 = (float(b) for b in box)
    sx, sy = out_hw[1] / (x1 - x0), out_hw[0] / (y1 - y0)
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    return torch.stack([fx * sx, fy * sy, (cx - x0) * sx, (cy - y0) * sy], dim=-1)


def intrinsics_matrix(fxfycxcy: Tensor) -> Tensor:
    """[..., 4] -> K [..., 3, 3]."""
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [torch.stack([fx, zero, cx], -1), torch.stack([zero, fy, cy], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=-2)


def project_points(points: Tensor, c2w: Tensor, fxfycxcy: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into a camera.

    Args:
        points: [..., N, 3] world points.  c2w: [..., 4, 4].  fxfycxcy: [..., 4].
    Returns:
        uv [..., N, 2] pixel coordinates (continuous; pixel (i, j)'s centre is (j + 0.5, i + 0.5)),
        depth [..., N] camera z.
    """
    w2c = invert_rigid(c2w)
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    depth = cam[..., 2]
    f, c = fxfycxcy[..., None, :2], fxfycxcy[..., None, 2:]
    uv = cam[..., :2] / depth[..., None] * f + c
    return uv, depth


def spherical_from_c2w(c2w: Tensor, up: str = "z", target: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Azimuth, elevation (degrees) and distance of camera centres about ``target`` (default origin).

    Azimuth 0 is the front camera (Z-up: at -y; Y-up: at +z); azimuth 90 is the subject's right (Z-up: at -x).
    """
    pos = c2w[..., :3, 3]
    if target is not None:
        pos = pos - _as_tensor(target, pos)
    if up == "y":
        pos = pos @ up_change_matrix("y", "z")[:3, :3].to(pos).T
    elif up != "z":
        raise ValueError(f"up axis must be 'y' or 'z', got {up!r}")
    dist = pos.norm(dim=-1)
    elev = torch.rad2deg(torch.asin((pos[..., 2] / dist.clamp_min(1e-12)).clamp(-1, 1)))
    azim = torch.rad2deg(torch.atan2(-pos[..., 0], -pos[..., 1])) % 360.0 + 0.0
    return azim, elev, dist


def camera_position(azimuth_deg: float, elevation_deg: float, radius: float) -> tuple[float, float, float]:
    """Z-up position of a camera at (azimuth, elevation, radius); inverse of :func:`spherical_from_c2w`."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return (-radius * math.cos(e) * math.sin(a), -radius * math.cos(e) * math.cos(a), radius * math.sin(e))


def scene_center_from_rays(c2w: Tensor) -> Tensor:
    """Least-squares point [3] closest to all optical axes of cameras c2w [V, 4, 4] (V >= 2, not all parallel)."""
    try:
        return point_nearest_rays(c2w[:, :3, 3], c2w[:, :3, 2]).to(c2w.dtype)
    except ValueError:
        raise ValueError("cannot find a scene centre: the cameras' optical axes are all parallel") from None


def normalize_cameras(
    c2w: Tensor, target_radius: float = 2.7, center: Tensor | None = None
) -> tuple[Tensor, Tensor, float]:
    """Move the scene centre to the origin and scale so the mean camera distance is ``target_radius``.

    Args:
        c2w: [V, 4, 4].  center: [3] scene centre; default: :func:`scene_center_from_rays`.
    Returns:
        (c2w [V, 4, 4], center [3], scale) with new_position = (position - center) * scale. Rotations and
        intrinsics are unchanged (a similarity transform of the world leaves images as they are).
    """
    center = scene_center_from_rays(c2w) if center is None else center.to(c2w)
    pos = c2w[:, :3, 3] - center
    scale = target_radius / pos.norm(dim=-1).mean().item()
    out = c2w.clone()
    out[:, :3, 3] = pos * scale
    return out, center, scale


def point_nearest_rays(origins: Tensor, dirs: Tensor) -> Tensor:
    """Least-squares point [3] nearest all rays ``origins`` [N, 3] + t ``dirs`` [N, 3] (N >= 2, not all parallel)."""
    o, d = origins.double(), torch.nn.functional.normalize(dirs.double(), dim=-1)
    proj = torch.eye(3, dtype=o.dtype) - d[:, :, None] * d[:, None, :]  # [N,3,3] projectors orthogonal to rays
    a, b = proj.sum(0), (proj @ o[:, :, None]).sum(0)
    if torch.linalg.matrix_rank(a) < 3:
        raise ValueError("cannot find a point nearest the rays: they are all parallel")
    return torch.linalg.solve(a, b).squeeze(-1).to(origins.dtype)


def rays_through_pixels(c2w: Tensor, fxfycxcy: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """World rays (origins [N, 3], unit directions [N, 3]) of cameras c2w [N, 4, 4] / fxfycxcy [N, 4] through the
    continuous pixel positions uv [N, 2] (the convention of :func:`project_points`)."""
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    cam = torch.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy, torch.ones_like(fx)], dim=-1)
    dirs = (c2w[:, :3, :3] @ cam[:, :, None]).squeeze(-1)
    return c2w[:, :3, 3], torch.nn.functional.normalize(dirs, dim=-1)


def subject_center(c2w: Tensor, fxfycxcy: Tensor, uv: Tensor) -> Tensor:
    """The subject's centre [3]: the point nearest all rays through its pixel centroids uv [V, 2] (e.g. the mask
    centroids) of cameras c2w [V, 4, 4] / fxfycxcy [V, 4] — not where the optical axes meet."""
    return point_nearest_rays(*rays_through_pixels(c2w.double(), fxfycxcy.double(), uv.double())).to(c2w.dtype)


def normalize_about_subject(c2w: Tensor, fxfycxcy: Tensor, center: Tensor,
                            target_radius: float = 2.7) -> tuple[Tensor, Tensor, Tensor]:
    """Per camera: move it along the line through ``center`` to distance ``target_radius`` (``center`` becomes the
    origin, rotations kept) and scale its intrinsics about the centre's pixel so the subject keeps its pixel size.

    With d the camera's distance to the centre and s = target_radius / d: fx, fy -> s fx, s fy and the principal
    point moves so the centre projects at the same pixel (c -> u0 - s (u0 - c)). To first order (a subject small
    against d) every pixel of the subject stays where it was; the image is not changed.

    Args:
        c2w: [V, 4, 4].  fxfycxcy: [V, 4].  center: [3] world point.
    Returns:
        (c2w [V, 4, 4] with every camera at ``target_radius`` from the origin, fxfycxcy [V, 4], scales s [V]).
    """
    center = center.to(c2w)
    rel = c2w[:, :3, 3] - center
    dist = rel.norm(dim=-1)
    s = target_radius / dist
    uv0, _ = project_points(center.expand(len(c2w), 1, 3), c2w, fxfycxcy)
    uv0 = uv0[:, 0]
    out = c2w.clone()
    out[:, :3, 3] = rel * s[:, None]
    k = fxfycxcy.clone()
    k[:, :2] = fxfycxcy[:, :2] * s[:, None]
    k[:, 2:] = uv0 - s[:, None] * (uv0 - fxfycxcy[:, 2:])
    return out, k, s


def check_c2w(c2w: Tensor, where: str, atol: float = 1e-3) -> None:
    """Raise ValueError naming ``where`` unless c2w [..., 4, 4] is finite, rigid and has a [0, 0, 0, 1] last row."""
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{where}: camera matrix must be 4x4, got shape {tuple(c2w.shape)}")
    if not torch.isfinite(c2w).all():
        raise ValueError(f"{where}: camera matrix has non-finite values")
    c = c2w.double()
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c.dtype)
    if not torch.allclose(c[..., 3, :], bottom.expand_as(c[..., 3, :]), atol=atol):
        raise ValueError(f"{where}: camera matrix last row must be [0, 0, 0, 1]")
    rot = c[..., :3, :3]
    err = (rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=c.dtype)).abs().max().item()
    if err > atol:
        raise ValueError(f"{where}: camera rotation is not orthonormal (max |R^T R - I| = {err:.3g})")
    if (torch.linalg.det(rot) < 0).any():
        raise ValueError(f"{where}: camera rotation is a reflection (det < 0)")


def check_intrinsics(fxfycxcy: Tensor, where: str) -> None:
    """Raise ValueError naming ``where`` unless intrinsics [..., 4] are finite with positive focal lengths."""
    if fxfycxcy.shape[-1] != 4:
        raise ValueError(f"{where}: intrinsics must be [..., 4] (fx, fy, cx, cy), got shape {tuple(fxfycxcy.shape)}")
    if not torch.isfinite(fxfycxcy).all():
        raise ValueError(f"{where}: intrinsics have non-finite values")
    if (fxfycxcy[..., :2] <= 0).any():
        raise ValueError(f"{where}: focal lengths must be positive")


def reference_similarity(from_c2w: Tensor, to_c2w: Tensor, scale: Tensor | float) -> Tensor:
    """The similarity M [..., 4, 4] (x_to = M x_from = s R x_from + t) that puts camera ``from_c2w`` of one frame on
    camera ``to_c2w`` of another: R = R_to R_from^T, t = c_to - s R c_from (camera centres c), scale s. Used to place
    what was made in a rig's frame (the rig's reference camera) in real cameras' frame (the real reference camera)."""
    from_c2w, to_c2w = torch.as_tensor(from_c2w), torch.as_tensor(to_c2w)
    s = torch.as_tensor(scale, dtype=to_c2w.dtype, device=to_c2w.device)
    r = to_c2w[..., :3, :3] @ from_c2w[..., :3, :3].transpose(-1, -2)
    t = to_c2w[..., :3, 3] - s[..., None] * (r @ from_c2w[..., :3, 3:])[..., 0]
    m = torch.zeros(r.shape[:-2] + (4, 4), dtype=to_c2w.dtype, device=to_c2w.device)
    m[..., :3, :3], m[..., :3, 3], m[..., 3, 3] = s[..., None, None] * r, t, 1.0
    return m


def cameras_into_frame(c2w: Tensor, similarity: Tensor) -> Tensor:
    """Cameras c2w [..., V, 4, 4] of the frame that ``similarity`` [..., 4, 4] (from :func:`reference_similarity`)
    maps into, expressed in the frame it maps from: rotation R^T R_c, centre M^-1 c. Same intrinsics, same image: a
    similarity changes no projection."""
    m = similarity[..., None, :, :]
    s = m[..., :3, :3].norm(dim=-2)[..., :1]  # [..., 1, 1]: the columns of s R have length s
    r = m[..., :3, :3] / s[..., None]
    out = c2w.clone()
    out[..., :3, :3] = r.transpose(-1, -2) @ c2w[..., :3, :3]
    out[..., :3, 3] = (r.transpose(-1, -2) @ (c2w[..., :3, 3] - m[..., :3, 3])[..., None])[..., 0] / s
    return out
