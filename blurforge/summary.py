"""Manifest summaries for `blurforge inspect`: counts, sizes, kernel statistics, source groups and
leakage across splits, failed inputs, a contact sheet of pairs."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

import pyarrow as pa

from blurforge.manifest import Manifest, leakage, leakage_lines, leakage_report


def _stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}


def errors_summary(errors: pa.Table, limit: int = 5) -> dict:
    """Failed inputs: how many inputs and error rows (one input can fail once per pair it was to
    give, or in several runs), rows by stage, and the first ``limit`` distinct failures
    ``{input, stage, error, rows}`` in table order."""
    distinct: dict[tuple, int] = {}
    stages: Counter = Counter()
    for r in errors.select(["input", "stage", "error"]).to_pylist():
        distinct[(r["input"], r["stage"], r["error"])] = distinct.get((r["input"], r["stage"], r["error"]), 0) + 1
        stages[r["stage"]] += 1
    return {
        "count": errors.num_rows,
        "inputs": len({i for i, _, _ in distinct}),
        "by_stage": dict(sorted(stages.items())),
        "first": [{"input": i, "stage": st, "error": e, "rows": n} for (i, st, e), n in list(distinct.items())[:limit]],
        "distinct": len(distinct),
    }


def format_errors(s: dict, where) -> list[str]:
    """Lines naming the failed inputs of :func:`errors_summary` (none when there are none)."""
    if not s["count"]:
        return []
    stages = ", ".join(f"{k} {v}" for k, v in s["by_stage"].items())
    rows = f"{s['count']} error rows: " if s["count"] != s["inputs"] else ""
    shown = f"first {len(s['first'])} shown, " if len(s["first"]) < s["distinct"] else ""
    lines = [f"{s['inputs']} failed input(s) ({rows}{stages}; {shown}all in {where}):"]
    lines += [f"  [{r['stage']}] {r['error']}" + (f" (x{r['rows']})" if r["rows"] > 1 else "") for r in s["first"]]
    return lines


def shown_paths(text: str, roots: dict[str, str]) -> str:
    """``text`` with each absolute folder in ``roots`` (``{"/abs/photos/": "photos/"}``, both
    ending in a separator) written the way the user typed it, so a summary uses one form of path."""
    for absolute, typed in roots.items():
        text = text.replace(absolute, typed)
    return text


def typed_roots(*pairs: tuple[str, str | os.PathLike]) -> dict[str, str]:
    """``shown_paths`` roots for folders given as ``(absolute, as typed)``; an empty typed form
    (the current directory) drops the prefix."""
    roots = {}
    for absolute, typed in pairs:
        typed = os.fspath(typed)
        if os.path.join(absolute, "") == os.sep:
            continue  # the file-system root: nothing to shorten
        if typed in ("", "."):
            roots[os.path.join(absolute, "")] = ""
        elif os.path.isabs(typed) or os.path.join(absolute, "") == os.path.join(typed, ""):
            continue  # typed absolute: already the form shown
        else:
            roots[os.path.join(absolute, "")] = os.path.join(typed, "")
    return roots


def manifest_summary(m: Manifest, errors: pa.Table | None = None) -> dict:
    """Counts by source and split, image sizes, kernel statistics, source groups and any leakage
    (:func:`blurforge.manifest.leakage`), and the failed inputs of ``errors`` when given."""
    t = m.table
    sources = t.column("source").to_pylist()
    splits = t.column("split").to_pylist()
    by = Counter(zip(sources, splits))
    params = [json.loads(p) for p in t.column("params").to_pylist()]
    lengths = [p["kernel_length"] for p in params if "kernel_length" in p]
    kernels = {p["kernel_id"] for p in params if "kernel_id" in p}
    noise = Counter(p.get("realism", {}).get("noise", "none") for p in params if "realism" in p)
    return {
        "pairs": t.num_rows,
        "by_source_split": {f"{s}/{sp}": n for (s, sp), n in sorted(by.items())},
        "splits": dict(sorted(Counter(splits).items())),
        "width": _stats(t.column("width").to_pylist()),
        "height": _stats(t.column("height").to_pylist()),
        "distinct_kernels": len(kernels),
        "kernel_length": _stats(lengths),
        "noise": dict(noise),
        "groups": len(set(t.column("group").to_pylist())),
        "leakage": leakage_report(leakage(t)),
        "errors": errors_summary(errors) if errors is not None else None,
    }


def format_summary(s: dict, location, errors_where=None) -> str:
    lines = [f"{location}: {s['pairs']} pairs"]
    lines.append("  source/split       pairs")
    for k, n in s["by_source_split"].items():
        lines.append(f"  {k:<18} {n:>6}")
    if s["width"]:
        w, h = s["width"], s["height"]
        lines.append(f"  width  min {w['min']:.0f}  mean {w['mean']:.0f}  max {w['max']:.0f}")
        lines.append(f"  height min {h['min']:.0f}  mean {h['mean']:.0f}  max {h['max']:.0f}")
    if s["kernel_length"]:
        kl = s["kernel_length"]
        lines.append(
            f"  kernels: {s['distinct_kernels']} distinct, trajectory length "
            f"min {kl['min']:.1f}  mean {kl['mean']:.1f}  max {kl['max']:.1f} px"
        )
    if s["noise"]:
        lines.append("  noise: " + ", ".join(f"{k} {v}" for k, v in sorted(s["noise"].items())))
    leaks = leakage_lines(s["leakage"])
    if not leaks:
        lines.append(f"  splits: {s['groups']} source group(s), none in more than one split")
    lines += [f"  {line}" for line in leaks]
    if s["errors"] is not None:
        failed = format_errors(s["errors"], errors_where)
        lines += [f"  {line}" for line in failed] or ["  failed inputs: none"]
    return "\n".join(lines)


def _thumb(path: Path, size: int) -> np.ndarray:
    """An RGB uint8 thumbnail fitted into size×size (grey if unreadable)."""
    import cv2

    from blurforge.imageio import ImageReadError, read_image

    canvas = np.full((size, size, 3), 64, np.uint8)
    try:
        img, _ = read_image(path)
    except ImageReadError:
        return canvas
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    y, x = (size - nh) // 2, (size - nw) // 2
    canvas[y : y + nh, x : x + nw] = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    return canvas


def pairs_contact_sheet(m: Manifest, path: str | Path, count: int = 8, size: int = 192) -> Path:
    """A PNG with one row per pair (blurry | sharp): ``count`` pairs taken in turn from each source
    (first keys of each), so every kind of pair in the manifest shows."""
    by_source: dict[str, list[dict]] = {}
    for r in m.table.sort_by("key").to_pylist():
        by_source.setdefault(r["source"], []).append(r)
    chosen: list[dict] = []
    for i in range(count):
        for source in sorted(by_source):
            if len(chosen) < count and i < len(by_source[source]):
                chosen.append(by_source[source][i])
    if not chosen:
        raise ValueError(f"{m.location}: no pairs to preview")
    return tile_sheet([[_thumb(m.abspath(r["blur_path"]), size), _thumb(m.abspath(r["sharp_path"]), size)]
                       for r in chosen], path)


def tile_sheet(rows: list[list[np.ndarray]], path: str | Path, pad: int = 4) -> Path:
    """Write a PNG grid of equal-size RGB uint8 tiles, one list per row, with black gaps."""
    import cv2

    lines = []
    for tiles in rows:
        gap = np.zeros((tiles[0].shape[0], pad, 3), np.uint8)
        lines.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    sep = np.zeros((pad, lines[0].shape[1], 3), np.uint8)
    sheet = np.concatenate([x for line in lines for x in (line, sep)][:-1], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the preview PNG")
    return path
