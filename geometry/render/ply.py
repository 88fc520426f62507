"""3DGS PLY files: one scene of Gaussians written and read in the standard layout common splat viewers open.

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

PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)


def _single_scene(g: Gaussians, where: str) -> dict[str, np.ndarray]:
    fields = {f.name: getattr(g, f.name).detach().cpu().double() for f in dataclasses.fields(g)}
    if fields["means"].dim() == 3:
        if fields["means"].shape[0] != 1:
            raise ValueError(f"{where}: a PLY holds one scene; got a batch of {fields['means'].shape[0]} "
                             "(use gaussians.select(b))")
        fields = {k: v[0] for k, v in fields.items()}
    Gaussians.unbatched(**fields).validate(where)
    return {k: v.numpy() for k, v in fields.items()}


def save_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write one scene (B=1 or unbatched fields) as a standard 3DGS PLY (binary little endian), atomically.

    Attributes: x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3 with f_dc = (rgb - 0.5) / SH_C0,
    opacity as a logit, scales as logs and unit quaternions (w, x, y, z), so common splat viewers open it.
    """
    if isinstance(path, Gaussians):  # tolerate save_ply(gaussians, path)
        path, gaussians = gaussians, path
    path = Path(path)
    s = _single_scene(gaussians, f"save_ply({path})")
    n = s["means"].shape[0]
    opac = np.clip(s["opacities"], 1e-7, 1 - 1e-7)
    quats = s["quats"] / np.maximum(np.linalg.norm(s["quats"], axis=-1, keepdims=True), 1e-12)
    cols = [
        s["means"], np.zeros((n, 3)), (s["colors"] - 0.5) / SH_C0, np.log(opac / (1 - opac))[:, None],
        np.log(np.maximum(s["scales"], 1e-12)), quats,
    ]
    data = np.concatenate(cols, axis=1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in PLY_PROPERTIES) + "end_header\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, header.encode("ascii") + np.ascontiguousarray(data).tobytes())


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


def load_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS PLY (as written by :func:`save_ply` or 3DGS trainers; extra attributes such as f_rest_* are
    ignored) -> Gaussians with B = 1 in float32 (colors from f_dc, opacities sigmoid, scales exp)."""
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
    return Gaussians.unbatched(means, quats, scales, opacities, colors)


def save_scene_ply(gaussians: Gaussians, path: str | Path, scene: int = 0) -> Path:
    """Write scene ``scene`` of a batch of Gaussians as a 3DGS .ply."""
    return save_ply(path, gaussians.select(scene))


__all__ = ["PLY_PROPERTIES", "load_ply", "save_ply", "save_scene_ply"]
