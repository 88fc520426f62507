"""3DGS PLY files: one scene of Gaussians written and read in the standard layout common splat viewers open.

:func:`save_ply` writes Inria 3DGS's vertex layout with the ``f_rest_*`` of SH degree 3 by default (zeros unless a
model's higher bands are given), so SuperSplat, Inria's loader and SIBR viewer, and gsplat/nerfstudio tools read it;
:func:`save_inria_model` writes Inria's model folder (``cfg_args``, ``point_cloud/iteration_N/point_cloud.ply``).

Example:
    >>> g = Gaussians.unbatched(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1),
    ...                         torch.full((1,), 0.5), torch.full((1, 3), 0.25))
    >>> back = load_ply(save_ply("one.ply", g))
    >>> back.num_gaussians, round(back.colors[0, 0, 0].item(), 4)
    (1, 0.25)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.files import write_atomic
from geometry.render.gaussians import SH_C0, Gaussians

DEFAULT_SH_DEGREE = 3  # Inria 3DGS's loader expects the f_rest_* of its degree (3 unless trained otherwise)
MAX_SH_DEGREE = 3
PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # the properties without SH bands above DC (sh_degree=0); ply_properties(N) inserts f_rest_* after f_dc_*


def _single_scene(g: Gaussians, where: str) -> dict[str, np.ndarray]:
    fields = {f.name: getattr(g, f.name).detach().cpu().double() for f in dataclasses.fields(g)}
    if fields["means"].dim() == 3:
        if fields["means"].shape[0] != 1:
            raise ValueError(f"{where}: a PLY holds one scene; got a batch of {fields['means'].shape[0]} "
                             "(use gaussians.select(b))")
        fields = {k: v[0] for k, v in fields.items()}
    Gaussians.unbatched(**fields).validate(where)
    return {k: v.numpy() for k, v in fields.items()}


def sh_rest_count(degree: int) -> int:
    """Coefficients per colour channel above the DC term for SH ``degree``: (degree + 1)^2 - 1 (0, 3, 8, 15)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2 - 1


def ply_properties(sh_degree: int = DEFAULT_SH_DEGREE) -> tuple[str, ...]:
    """The vertex properties :func:`save_ply` writes, in order: Inria 3DGS's layout for ``sh_degree``
    (``f_rest_*`` after ``f_dc_*``: 3 * ((sh_degree + 1)^2 - 1) of them, channel-major as Inria stores them)."""
    rest = tuple(f"f_rest_{i}" for i in range(3 * sh_rest_count(sh_degree)))
    return PLY_PROPERTIES[:9] + rest + PLY_PROPERTIES[9:]


def _sh_rest_columns(sh_rest: Tensor | np.ndarray | None, n: int, degree: int, where: str) -> np.ndarray:
    """[N, 3 * K] f_rest columns for ``degree`` (K = sh_rest_count(degree)): the given higher bands [N, k, 3]
    (or [1, N, k, 3]) in Inria's channel-major order, zero-padded from k up to K coefficients per channel."""
    want = sh_rest_count(degree)
    out = np.zeros((n, 3, want))
    if sh_rest is None:
        return out.reshape(n, 3 * want)
    rest = sh_rest.detach().cpu().double().numpy() if isinstance(sh_rest, Tensor) else np.asarray(sh_rest, "f8")
    if rest.ndim == 4 and rest.shape[0] == 1:
        rest = rest[0]
    if rest.ndim != 3 or rest.shape[0] != n or rest.shape[2] != 3:
        raise ValueError(f"{where}: sh_rest must be [N={n}, K, 3] (SH coefficients above the DC term), "
                         f"got {list(rest.shape)}")
    k = rest.shape[1]
    if k not in {sh_rest_count(d) for d in range(MAX_SH_DEGREE + 1)}:
        raise ValueError(f"{where}: sh_rest has {k} coefficients per channel; an SH degree has 3, 8 or 15")
    if k > want:
        raise ValueError(f"{where}: the Gaussians carry SH degree {round((k + 1) ** 0.5) - 1} but sh_degree={degree} "
                         "would drop bands; pass sh_degree >= the model's degree")
    if not np.isfinite(rest).all():
        raise ValueError(f"{where}: sh_rest has non-finite values")
    out[:, :, :k] = rest.transpose(0, 2, 1)
    return out.reshape(n, 3 * want)


def save_ply(path: str | Path, gaussians: Gaussians, *, sh_degree: int = DEFAULT_SH_DEGREE,
             sh_rest: Tensor | np.ndarray | None = None) -> Path:
    """Write one scene (B=1 or unbatched fields) as a 3DGS PLY (binary little endian), atomically.

    Attributes, in Inria 3DGS's order: x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3 with
    f_dc = (rgb - 0.5) / SH_C0, opacity as a logit, scales as logs and unit quaternions (w, x, y, z).
    ``sh_degree`` (default 3, the degree Inria's loader expects) sets K = (sh_degree + 1)^2 - 1; ``sh_rest``
    [N, k, 3] are the SH bands above DC a model predicts (k = 3, 8 or 15), written in Inria's channel-major order and
    zero-padded to K; without it every f_rest is 0 (view-independent colour). ``sh_degree=0`` writes no f_rest.
    SuperSplat, Inria's loader and viewers, and gsplat/nerfstudio tools open the file.
    """
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"save_ply(path, gaussians): gaussians must be Gaussians, got {type(gaussians).__name__} "
                        "(the path comes first)")
    path = Path(path)
    where = f"save_ply({path})"
    s = _single_scene(gaussians, where)
    n = s["means"].shape[0]
    opac = np.clip(s["opacities"], 1e-7, 1 - 1e-7)
    quats = s["quats"] / np.maximum(np.linalg.norm(s["quats"], axis=-1, keepdims=True), 1e-12)
    cols = [
        s["means"], np.zeros((n, 3)), (s["colors"] - 0.5) / SH_C0, _sh_rest_columns(sh_rest, n, sh_degree, where),
        np.log(opac / (1 - opac))[:, None], np.log(np.maximum(s["scales"], 1e-12)), quats,
    ]
    data = np.concatenate(cols, axis=1).astype("<f4")
    names = ply_properties(sh_degree)
    assert data.shape[1] == len(names)
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in names) + "end_header\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, header.encode("ascii") + np.ascontiguousarray(data).tobytes())


INRIA_ITERATION = 30000


def save_inria_model(folder: str | Path, gaussians: Gaussians, *, iteration: int = INRIA_ITERATION,
                     sh_degree: int = DEFAULT_SH_DEGREE, sh_rest: Tensor | np.ndarray | None = None,
                     white_background: bool = True) -> Path:
    """Write Inria 3DGS's model-folder layout, which its ``render.py`` and SIBR viewer (``-m FOLDER``) open::

        FOLDER/cfg_args                                        the training arguments (sh_degree, white_background)
        FOLDER/point_cloud/iteration_<iteration>/point_cloud.ply   :func:`save_ply` with ``sh_degree``

    Returns the folder.
    """
    folder = Path(folder)
    save_ply(folder / "point_cloud" / f"iteration_{int(iteration)}" / "point_cloud.ply", gaussians,
             sh_degree=sh_degree, sh_rest=sh_rest)
    cfg = (f"Namespace(sh_degree={int(sh_degree)}, source_path={str(folder.resolve())!r}, "
           f"model_path={str(folder.resolve())!r}, images='images', resolution=-1, "
           f"white_background={bool(white_background)}, data_device='cuda', eval=False)")
    write_atomic(folder / "cfg_args", cfg)
    return folder


_PLY_TYPES = {
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1", "char": "i1",
    "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
}


def _read_ply_header(f, path: Path) -> tuple[int, list[tuple[str, str]], str]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic)")
    fmt, count, props, in_vertex = None, None, [], False
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            if count is not None and in_vertex:
                raise ValueError(f"{path}: only a single 'vertex' element is supported, found also {words[1]!r}")
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
            elif count is None:
                raise ValueError(f"{path}: element {words[1]!r} before 'vertex' is not supported")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list":
                raise ValueError(f"{path}: list properties in 'vertex' are not supported")
            if words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY property type {words[1]!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt != "binary_little_endian":
        raise ValueError(f"{path}: PLY format {fmt!r} is not supported (need binary_little_endian)")
    if count is None:
        raise ValueError(f"{path}: PLY has no 'vertex' element")
    return count, props, fmt


def load_ply(path: str | Path, *, with_sh_rest: bool = False) -> Gaussians | tuple[Gaussians, Tensor | None]:
    """Read a 3DGS PLY (as written by :func:`save_ply` at any ``sh_degree``, by Inria 3DGS or other trainers) ->
    Gaussians with B = 1 in float32 (colors from f_dc, opacities sigmoid, scales exp). Attributes other than the
    3DGS ones are ignored. ``with_sh_rest=True`` returns ``(gaussians, sh_rest)``: the f_rest bands as [1, N, K, 3]
    (Inria's channel-major order undone), or None when the file has none or they are all zero (padding)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: PLY file is missing")
    with open(path, "rb") as f:
        count, props, _ = _read_ply_header(f, path)
        names = [p for p, _ in props]
        missing = [p for p in PLY_PROPERTIES if p not in names and p not in ("nx", "ny", "nz")]
        if missing:
            raise ValueError(f"{path}: PLY lacks 3DGS attributes {missing}")
        dtype = np.dtype([(p, "<" + t) for p, t in props])
        raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{path}: PLY is truncated ({len(raw)} bytes of vertex data, header promises "
                         f"{count * dtype.itemsize})")
    v = np.frombuffer(raw, dtype=dtype, count=count)

    def cols(*ps: str) -> Tensor:
        return torch.from_numpy(np.stack([v[p].astype(np.float32) for p in ps], axis=-1))

    means = cols("x", "y", "z")
    colors = cols("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5
    opacities = torch.sigmoid(cols("opacity")[:, 0])
    scales = torch.exp(cols("scale_0", "scale_1", "scale_2"))
    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    if not all(torch.isfinite(t).all() for t in (means, colors, opacities, scales, quats)):
        raise ValueError(f"{path}: PLY has non-finite Gaussian attributes")
    g = Gaussians.unbatched(means, quats, scales, opacities, colors)
    if not with_sh_rest:
        return g
    rest_names = [p for p in names if p.startswith("f_rest_")]
    if not rest_names:
        return g, None
    if len(rest_names) % 3 or rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise ValueError(f"{path}: f_rest_* properties are not 3 * K consecutive ones ({len(rest_names)} found)")
    k = len(rest_names) // 3
    rest = cols(*rest_names).view(count, 3, k).transpose(1, 2).contiguous()  # channel-major -> [N, K, 3]
    if not torch.isfinite(rest).all():
        raise ValueError(f"{path}: PLY has non-finite f_rest values")
    return g, (rest[None] if rest.any() else None)


def save_scene_ply(gaussians: Gaussians, path: str | Path, scene: int = 0, *,
                   sh_degree: int = DEFAULT_SH_DEGREE) -> Path:
    """Write scene ``scene`` of a batch of Gaussians as a 3DGS .ply (:func:`save_ply`)."""
    return save_ply(path, gaussians.select(scene), sh_degree=sh_degree)


__all__ = ["DEFAULT_SH_DEGREE", "INRIA_ITERATION", "PLY_PROPERTIES", "load_ply", "ply_properties", "save_inria_model",
           "save_ply", "save_scene_ply", "sh_rest_count"]
