"""Convert FaceLift-layout folders (a folder of sample dirs, one sample dir, or a list file) to webdataset shards,
and back.

    python -m tools.make_shards SRC OUT [--shard-size N] [--prefix shard]
    python -m tools.make_shards SHARDS OUT --to-folders

Lossless: each scene becomes one webdataset sample whose members are the scene's ``opencv_cameras.json`` bytes
(``KEY.cameras.json``) and every view's PNG bytes (``KEY.VVV.png``, camera-frame order), copied verbatim — 8- and
16-bit PNGs keep every bit. Shards are ``OUT/PREFIX-000000.tar`` ...; read them with a source of ``format: shards``,
``urls: OUT`` (or a brace pattern). Prints one JSON line: {"scenes", "shards", "out"}.

The train / validation split travels with the scenes: when SRC is a folder with FaceLift's list files
(``data_train.txt`` / ``data_val.txt``, as ``tools.synthesize`` writes them), each scene they list gets a member
``KEY.split.txt`` (``train`` or ``val``). ``--to-folders`` writes the shards' scenes back as ``OUT/<sample dir name>/``
with the camera file and the images at the paths it names, byte for byte, plus ``OUT/data_list.txt`` (one sample dir
per line, shard order) and, when the shards carry the split, ``OUT/data_train.txt`` / ``OUT/data_val.txt`` (FaceLift's
list files, absolute sample dirs).

Both ways write into a temporary folder next to OUT (``.OUT.tmp-<pid>``) renamed to OUT when every scene is in: a
failure (a bad scene, a full disk, a kill) leaves no partial, valid-looking output. OUT must be new or empty, or
(shards) hold only an earlier ``PREFIX-*.tar`` set, which the new one replaces whole.

Every path a camera file or shard names (a frame's ``file_path``, a member name, the sample folder) must stay inside
its scene / output folder: an absolute path, ``..`` or a symlink leading outside is an error naming the file and the
entry (``geometry.camera_files.frame_image_path``), both when reading folders and when writing them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import webdataset as wds

from datamodules.sources import CAMERA_FILE, ShardSource, resolve_list_entries, sample_dirs
from geometry.camera_files import contained_path, frame_image_path
from geometry.files import atomic_directory
from geometry.progress import progress


def scene_members(sample_dir: Path) -> dict[str, bytes]:
    """{extension: bytes} of one FaceLift sample: cameras.json plus VVV.png per camera frame (verbatim)."""
    cam_path = sample_dir / CAMERA_FILE
    try:
        cam_bytes = cam_path.read_bytes()
        frames = json.loads(cam_bytes)["frames"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{cam_path}: cannot read camera file ({e})") from None
    members = {"cameras.json": cam_bytes}
    for v, fr in enumerate(frames):
        img = frame_image_path(sample_dir, fr.get("file_path"), v, str(cam_path))  # inside the sample folder
        if not img.is_file():
            raise FileNotFoundError(f"{img}: image of frame {v} is missing")
        members[f"{v:03d}.png"] = img.read_bytes()
    return members


def _replaceable(out: Path, keep: Callable[[Path], bool], what: str) -> None:
    """``out`` may be replaced as a whole: it does not exist, is empty, or holds only entries ``keep`` accepts (an
    earlier output of the same kind); anything else is an error naming the first other entry."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    others = sorted(p.name for p in out.iterdir() if not keep(p))
    if others:
        raise ValueError(f"{out}: would overwrite a folder that holds more than {what} ({others[0]!r}"
                         f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}); choose a new or empty folder")


_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.+=@-]+$")


def check_prefix(prefix: str) -> str:
    """``--prefix`` is part of a file name in OUT: letters, digits and ``_ . + = @ -`` only (no ``/``, so no ``..``
    component or absolute path can lead the shards outside OUT), not ``.`` / ``..``; else a ValueError naming it."""
    if not _PREFIX_RE.match(prefix) or prefix in (".", ".."):
        raise ValueError(f"--prefix {prefix!r} must be a plain file-name prefix (letters, digits, _ . + = @ -): the "
                         "shards are written as OUT/PREFIX-NNNNNN.tar, inside OUT")
    return prefix


SPLIT_LISTS = {"train": "data_train.txt", "val": "data_val.txt"}  # FaceLift's list files, by split
SPLIT_MEMBER = "split.txt"


def source_splits(src: str | Path) -> dict[Path, str]:
    """{resolved sample dir: "train" | "val"} from the list files beside the scenes of ``src`` (a folder holding
    ``data_train.txt`` / ``data_val.txt``); empty when it has none. A scene in both lists is an error naming it."""
    src = Path(src)
    out: dict[Path, str] = {}
    if not src.is_dir():
        return out
    for split, name in SPLIT_LISTS.items():
        if (src / name).is_file():
            for d in resolve_list_entries(src / name):
                if out.setdefault(d.resolve(), split) != split:
                    raise ValueError(f"{d}: listed in both {src / SPLIT_LISTS['train']} and {src / name}")
    return out


def make_shards(src: str | Path, out: str | Path, shard_size: int = 100, prefix: str = "shard") -> dict:
    """Write every sample of ``src`` into tar shards of ``shard_size`` scenes under ``out``; returns a summary.

    The shards are written into a temporary folder next to ``out`` (``.OUT.tmp-<pid>``) that replaces ``out`` only
    when every scene is in: a failure leaves no partial shard set (and an earlier one of ``out`` untouched). ``out``
    must be new, empty or hold only ``PREFIX-*.tar`` shards (an earlier set, replaced whole)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    check_prefix(prefix)  # before anything is written: shards are always files directly in OUT
    dirs = sample_dirs(src)
    splits = source_splits(src)
    out = Path(out)
    shard_re = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar$")
    _replaceable(out, lambda p: p.is_file() and bool(shard_re.match(p.name)), f"{prefix}-NNNNNN.tar shards")
    with atomic_directory(out) as tmp:
        pattern = str(tmp / f"{prefix}-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
            for n, d in enumerate(progress(dirs, "scenes -> shards", unit="scene")):
                key = f"{n:08d}_" + re.sub(r"[^A-Za-z0-9_-]", "_", d.name)
                split = splits.get(d.resolve())
                sink.write({"__key__": key, **scene_members(d), **({SPLIT_MEMBER: split} if split else {})})
        shards = sorted(str(p) for p in tmp.glob(f"{prefix}-*.tar"))
    counts = {k: sum(1 for d in dirs if splits.get(d.resolve()) == k) for k in SPLIT_LISTS}
    return {"scenes": len(dirs), "shards": len(shards), "out": str(out), **({"splits": counts} if splits else {})}


_KEY_RE = re.compile(r"^\d{8}_(.+)$")


def shards_to_folders(src: str | Path, out: str | Path) -> dict:
    """Write every scene of the shards ``src`` (a folder of .tar files, one .tar, or a brace pattern) as a FaceLift
    sample folder under ``out``, verbatim; returns a summary."""

    shards = ShardSource("shards", "real", urls=str(src))
    out = Path(out)
    _replaceable(out, lambda p: False, "nothing")  # sample folders are never merged into another output
    with atomic_directory(out) as tmp:
        dirs, splits = _write_folders(shards, tmp)
        (tmp / "data_list.txt").write_text("".join(f"{(out / d.name).resolve()}\n" for d in dirs))
        if any(splits):  # the split the shards carry, as FaceLift's list files
            for split, name in SPLIT_LISTS.items():
                (tmp / name).write_text("".join(f"{(out / d.name).resolve()}\n" for d, k in zip(dirs, splits)
                                                if k == split))
    counts = {k: splits.count(k) for k in SPLIT_LISTS}
    return {"scenes": len(dirs), "shards": len(shards.shards), "out": str(out),
            **({"splits": counts} if any(splits) else {})}


def _write_folders(shards: Any, out: Path) -> tuple[list[Path], list[str | None]]:
    """The scenes written as sample folders under ``out`` and each one's split (its ``split.txt`` member, or None)."""
    dirs: list[Path] = []
    splits: list[str | None] = []
    for i, (_, key, _) in enumerate(progress(shards.entries, "shards -> scenes", unit="scene")):
        m = _KEY_RE.match(os.path.basename(key))
        target = contained_path(out, m.group(1) if m else os.path.basename(key), f"{shards.where(i)}: sample folder")
        if target.exists():
            raise ValueError(f"{shards.where(i)}: would overwrite {target}")
        cam_bytes = shards._read(i, "cameras.json")
        frames = json.loads(cam_bytes)["frames"]
        shards.check_views(i, len(frames))  # one PNG member per frame, by number (SampleError naming them)
        pngs = shards.view_exts(i)
        where = f"{shards.where(i)} member cameras.json"
        paths = [frame_image_path(target, fr.get("file_path"), v, where) for v, fr in enumerate(frames)]  # all first
        target.mkdir(parents=True)
        (target / CAMERA_FILE).write_bytes(cam_bytes)
        for path, ext in zip(paths, pngs):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(shards._read(i, ext))
        dirs.append(target)
        splits.append(_split_of(shards, i))
    return dirs, splits


def _split_of(shards: Any, i: int) -> str | None:
    if SPLIT_MEMBER not in shards.entries[i][2]:
        return None
    split = shards._read(i, SPLIT_MEMBER).decode("utf-8", "replace").strip()
    if split not in SPLIT_LISTS:
        raise ValueError(f"{shards.where(i)}: member {SPLIT_MEMBER} says {split!r}, not one of {sorted(SPLIT_LISTS)}")
    return split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.make_shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="folder of sample dirs, one sample dir, or a list file")
    ap.add_argument("out", help="output directory for the .tar shards")
    ap.add_argument("--shard-size", type=int, default=100, help="scenes per shard (default 100)")
    ap.add_argument("--prefix", default="shard", help="shard file name prefix: OUT/PREFIX-NNNNNN.tar (a plain name)")
    ap.add_argument("--to-folders", action="store_true", help="the other way: SRC is shards, OUT gets sample folders")
    args = ap.parse_args(argv)
    try:
        if args.to_folders:
            summary = shards_to_folders(args.src, args.out)
        else:
            summary = make_shards(args.src, args.out, args.shard_size, args.prefix)
    except (ValueError, FileNotFoundError) as e:
        print(f"make_shards: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
