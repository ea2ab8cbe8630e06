"""Import existing paired datasets (GoPro, REDS, RealBlur/RSBlur lists) as manifest rows.

``import_pairs(name, path)`` → ``(table, root, errors)``: a ``MANIFEST_SCHEMA`` table whose
image paths are relative to ``root``, and error dicts (``ERRORS_SCHEMA`` columns) for every
file that could not be paired. Nothing is copied: rows point at the dataset's own files.

Layouts (detected from ``path``):

- ``gopro`` — a folder holding ``sharp/`` and ``blur/`` (or ``blur_gamma/``) side by side, at any
  depth: GoPro_Large's ``train/SEQ/{blur,blur_gamma,sharp}/*.png``. The first of ``blur_dirs``
  present in a sequence is used (default: ``blur``, else ``blur_gamma``); pass
  ``blur_dirs=("blur_gamma",)`` for the gamma-averaged set. A blurry ``blur/<f>`` pairs with
  ``sharp/<f>`` (same relative file name).
- ``reds`` — sibling folders ``X_blur/`` and ``X_sharp/`` (REDS' ``train_blur`` / ``train_sharp``,
  ``val_blur`` / ``val_sharp``); ``X_blur/SEQ/f.png`` pairs with ``X_sharp/SEQ/f.png``. Other
  variants (``train_blur_bicubic``, ``train_blur_jpeg``) are not ``*_blur`` and are left alone.
- ``list`` — ``path`` is a text file, one pair per line (RealBlur / RSBlur lists): two paths
  relative to the list file's folder, extra columns ignored, blank lines and ``#`` comments
  skipped. The column order is ``blur sharp`` unless the file's paths say otherwise: when the
  first column names ``gt``/``sharp`` folders or files and the second ``blur`` ones (RealBlur's
  lists are ``gt blur``), the columns are swapped; the order used is recorded in ``params``.

Rows: ``key = NAME/<blur path relative to root>``, ``source = import:NAME``, ``seed`` null,
``split`` from the layout (a path component or list-file name with a ``test`` / ``val`` token,
else ``train``), ``width``/``height`` from the image headers (Pillow, no decode), both SHA-256s,
``params`` = JSON with the layout and the original paths, and ``group`` = the scene
(:func:`scene_group`): consecutive frames of one sequence are near-duplicates, so a whole
sequence shares a split.

Errors (never silently dropped): a blurry image without its sharp partner or the reverse, a
pair whose two sizes differ, an unreadable or missing file, a malformed list line, a repeated
key.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from blurforge.manifest import rows_table, sha256_file

BLUR_DIRS = ("blur", "blur_gamma")
_SHARP_WORDS = {"gt", "sharp", "target", "groundtruth"}
_BLUR_WORDS = {"blur", "blurred", "blurry", "input"}


def _tokens(text: str) -> set[str]:
    return set(re.split(r"[^a-z]+", text.lower()))


def split_from(parts) -> str:
    """``test`` / ``val`` when a name in ``parts`` has such a token (``test``, ``GoPro_test``,
    ``val_blur``, ``RealBlur_J_test_list.txt``), else ``train``."""
    tokens = {t for p in parts for t in re.split(r"[^a-z0-9]+", str(p).lower())}
    if tokens & {"test", "testing"}:
        return "test"
    if tokens & {"val", "valid", "validation"}:
        return "val"
    return "train"


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header; raises ``OSError``/``ValueError`` naming the reason."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _find_files(directory: Path) -> dict[str, Path]:
    from blurforge.imageio import find_images

    return {p.relative_to(directory).as_posix(): p for p in find_images(directory)}


def scene_group(params: dict) -> str | None:
    """The group of an imported pair, ``scene:<folder>``, from its ``params`` (paths relative to
    the import root; the import NAME is left out, so ``gopro`` and ``gopro_gamma`` imports of one
    folder, which share their sharp frames, share their groups):

    - ``gopro``: the sequence folder (``train/GOPR0372_07_00``);
    - ``reds``: ``X_sharp/SEQ`` as ``X/SEQ`` (``train/000``; ``train_blur`` shares it);
    - ``list``: the sharp image's folder, stepping over a trailing ``gt``/``sharp``/``target``
      folder (RealBlur ``RealBlur_J/test/scene001``). A flat list, whose sharp images share one
      folder, is one group: nothing tells which of its pairs are frames of one scene.

    None when ``params`` lack what is needed.
    """
    layout, sharp = params.get("layout"), params.get("sharp")
    if layout == "gopro" and params.get("sequence") is not None:
        return f"scene:{params['sequence']}"
    if not sharp:
        return None
    folder = posixpath.dirname(sharp)
    if layout == "reds" and params.get("sharp_dir"):
        sharp_dir = params["sharp_dir"]
        inner = posixpath.relpath(folder, sharp_dir)
        base = sharp_dir[: -len("_sharp")] if sharp_dir.endswith("_sharp") else sharp_dir
        return f"scene:{posixpath.normpath(posixpath.join(base, inner))}"
    if _tokens(posixpath.basename(folder)) & _SHARP_WORDS:
        folder = posixpath.dirname(folder)
    return f"scene:{folder or '.'}"


def _error(path, message: str, key: str | None = None) -> dict:
    return {"input": str(path), "stage": "import", "error": message, "key": key}


# ---------------------------------------------------------------------------------- planning


def _plan_gopro(root: Path, blur_dirs) -> tuple[list[dict], list[dict]]:
    candidates, errors = [], []
    seq_dirs = sorted({p.parent for p in root.rglob("sharp") if p.is_dir()}
                      | {p.parent for d in BLUR_DIRS for p in root.rglob(d) if p.is_dir()})
    for seq in seq_dirs:
        blur_name = next((d for d in blur_dirs if (seq / d).is_dir()), None)
        sharp_dir = seq / "sharp"
        if blur_name is None or not sharp_dir.is_dir():
            have = "sharp/" if sharp_dir.is_dir() else "/".join(d for d in BLUR_DIRS if (seq / d).is_dir()) + "/"
            want = " or ".join(f"{d}/" for d in blur_dirs) if blur_name is None else "sharp/"
            errors.append(_error(seq, f"{seq}: has {have} but no {want} — every image in it is unpaired; "
                                      "add the partner folder or leave the sequence out"))
            continue
        blur_files, sharp_files = _find_files(seq / blur_name), _find_files(sharp_dir)
        params = {"layout": "gopro", "sequence": seq.relative_to(root).as_posix(), "blur_dir": blur_name}
        candidates += _pair_by_name(root, blur_files, sharp_files, seq / blur_name, sharp_dir, params, errors)
    return candidates, errors


def _plan_reds(root: Path) -> tuple[list[dict], list[dict]]:
    candidates, errors = [], []
    for blur_dir in sorted(p for p in root.rglob("*_blur") if p.is_dir()):
        sharp_dir = blur_dir.with_name(blur_dir.name[: -len("_blur")] + "_sharp")
        if not sharp_dir.is_dir():
            errors.append(_error(blur_dir, f"{blur_dir}: no sibling {sharp_dir.name}/ — its images are unpaired"))
            continue
        params = {"layout": "reds", "blur_dir": blur_dir.relative_to(root).as_posix(),
                  "sharp_dir": sharp_dir.relative_to(root).as_posix()}
        candidates += _pair_by_name(root, _find_files(blur_dir), _find_files(sharp_dir), blur_dir, sharp_dir,
                                    params, errors)
    for sharp_dir in sorted(p for p in root.rglob("*_sharp") if p.is_dir()):
        if not sharp_dir.with_name(sharp_dir.name[: -len("_sharp")] + "_blur").is_dir():
            errors.append(_error(sharp_dir, f"{sharp_dir}: no sibling "
                                            f"{sharp_dir.name[:-len('_sharp')]}_blur/ — its images are unpaired"))
    return candidates, errors


def _pair_by_name(root, blur_files, sharp_files, blur_dir, sharp_dir, params, errors) -> list[dict]:
    out = []
    for rel in sorted(blur_files.keys() - sharp_files.keys()):
        errors.append(_error(blur_files[rel], f"{blur_files[rel]}: blurry image without a sharp partner "
                                              f"(no {sharp_dir / rel}) — add it or remove the blurry image"))
    for rel in sorted(sharp_files.keys() - blur_files.keys()):
        errors.append(_error(sharp_files[rel], f"{sharp_files[rel]}: sharp image without a blurry partner "
                                               f"(no {blur_dir / rel}) — add it or remove the sharp image"))
    for rel in sorted(blur_files.keys() & sharp_files.keys()):
        out.append({"blur": blur_files[rel], "sharp": sharp_files[rel], "params": dict(params)})
    return out


def _column_order(pairs: list[tuple[str, str]]) -> str:
    """``blur,sharp`` unless the paths say the first column is the sharp one (RealBlur: gt first)."""
    def votes(col: int, words: set[str]) -> int:
        return sum(bool(_tokens(p[col]) & words) for p in pairs)

    swapped = votes(0, _SHARP_WORDS) + votes(1, _BLUR_WORDS)
    straight = votes(0, _BLUR_WORDS) + votes(1, _SHARP_WORDS)
    return "sharp,blur" if swapped > straight else "blur,sharp"


def _plan_list(list_file: Path) -> tuple[list[dict], list[dict], Path]:
    root = list_file.parent
    errors, entries = [], []
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{list_file}: cannot read the list file ({exc}) — pass a text file of "
                         "'blur_path sharp_path' lines") from None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        if len(cols) < 2:
            errors.append(_error(f"{list_file}:{n}", f"{list_file}:{n}: expected 'blur_path sharp_path', "
                                                     f"got {line[:80]!r} — fix or remove the line"))
            continue
        entries.append((n, cols[0], cols[1]))
    order = _column_order([(a, b) for _, a, b in entries])
    split = split_from([list_file.name])
    candidates = []
    for n, a, b in entries:
        blur_text, sharp_text = (a, b) if order == "blur,sharp" else (b, a)
        candidates.append({
            "blur": root / blur_text, "sharp": root / sharp_text, "split": split,
            "params": {"layout": "list", "list": list_file.name, "line": n, "columns": order},
        })
    return candidates, errors, root


# ------------------------------------------------------------------------------------- rows


def _row(name: str, root: Path, cand: dict) -> tuple[dict | None, dict | None]:
    blur, sharp = Path(cand["blur"]), Path(cand["sharp"])
    blur_rel = Path(os.path.relpath(os.path.abspath(blur), os.path.abspath(root))).as_posix()
    sharp_rel = Path(os.path.relpath(os.path.abspath(sharp), os.path.abspath(root))).as_posix()
    key = f"{name}/{blur_rel}"
    sizes = {}
    for which, p in (("blurry", blur), ("sharp", sharp)):
        if not p.is_file():
            return None, _error(p, f"{p}: {which} image missing (named by the pair of {blur_rel}) — "
                                   "fix the path or remove the pair", key)
        try:
            sizes[which] = _image_size(p)
        except Exception as exc:  # noqa: BLE001 — Pillow raises many kinds for a bad header
            return None, _error(p, f"{p}: unreadable {which} image ({type(exc).__name__}: {exc}) — "
                                   "re-export or remove it", key)
    if sizes["blurry"] != sizes["sharp"]:
        (bw, bh), (sw, sh) = sizes["blurry"], sizes["sharp"]
        return None, _error(blur, f"{blur}: blurry {bw}x{bh} but its sharp partner {sharp} is {sw}x{sh} — "
                                  "a pair must have one size; fix or remove it", key)
    w, h = sizes["blurry"]
    params = {**cand["params"], "blur": blur_rel, "sharp": sharp_rel}
    split = cand.get("split") or split_from(Path(blur_rel).parent.parts)  # folders, not file names
    return {
        "key": key, "blur_path": blur_rel, "sharp_path": sharp_rel, "split": split,
        "group": scene_group(params), "source": f"import:{name}", "width": int(w), "height": int(h), "seed": None,
        "params": json.dumps(params, sort_keys=True),
        "blur_sha256": sha256_file(blur), "sharp_sha256": sha256_file(sharp),
    }, None


def detect_layout(path: Path) -> str:
    """``list`` for a file, ``gopro`` or ``reds`` for a folder; ``ValueError`` when neither fits."""
    if path.is_file():
        return "list"
    if not path.is_dir():
        raise FileNotFoundError(f"--import {path}: no such file or folder")
    if any(p.is_dir() for p in path.rglob("sharp")):
        return "gopro"
    if any(p.is_dir() for p in path.rglob("*_sharp")) or any(p.is_dir() for p in path.rglob("*_blur")):
        return "reds"
    raise ValueError(
        f"--import {path}: no known layout — expected SEQ/blur + SEQ/sharp folders (GoPro), "
        "X_blur + X_sharp folders (REDS), or a list file of 'blur_path sharp_path' lines"
    )


def import_pairs(
    name: str, path: str | os.PathLike, blur_dirs: tuple[str, ...] = BLUR_DIRS, threads: int = 4
) -> tuple[pa.Table, Path, list[dict]]:
    """Rows for the pairs of an existing dataset; see the module docstring.

    Returns ``(table sorted by key, root its paths are relative to, error dicts)``.
    """
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"--import {name!r}=...: NAME must be non-empty, without '/' or spaces — it prefixes keys")
    path = Path(path)
    layout = detect_layout(path)
    if layout == "list":
        candidates, errors, root = _plan_list(path)
    elif layout == "gopro":
        (candidates, errors), root = _plan_gopro(path, blur_dirs), path
    else:
        (candidates, errors), root = _plan_reds(path), path

    with ThreadPoolExecutor(max(1, threads)) as pool:  # header reads and hashing release the GIL
        results = list(pool.map(lambda c: _row(name, root, c), candidates))
    rows, seen = [], {}
    for row, err in results:
        if err is not None:
            errors.append(err)
        elif row["key"] in seen:
            errors.append(_error(row["blur_path"], f"{row['blur_path']}: listed twice ({seen[row['key']]} and "
                                 f"{json.loads(row['params']).get('line')}) — keys must be unique; keep one line",
                                 row["key"]))
        else:
            seen[row["key"]] = json.loads(row["params"]).get("line")
            rows.append(row)
    return rows_table(rows).sort_by("key"), root, errors
