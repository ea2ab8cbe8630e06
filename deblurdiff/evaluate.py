"""``deblurdiff evaluate``: score predictions against a manifest split (the paper's Table 1).

Predictions come from a folder (``--predictions DIR``, files named
:func:`deblurdiff.infer.prediction_name` of each key, any image extension) or are made first by
``deblurdiff infer`` on the manifest (``--checkpoint C`` plus the infer options; written to
``--predictions DIR`` or, by default, ``<report stem>_predictions/`` beside the report).

Writes ``report.csv`` (one row per manifest row of the split: key, source, split, status,
psnr, ssim, psnr_input, ssim_input, the optional metrics asked for, error) and ``report.json``
(settings, per source and split means and counts, unavailable metrics with reasons), and prints
the summary table. ``psnr_input`` / ``ssim_input`` score the blurry input itself against the
sharp image, with the same colour space and crop: the baseline every deblurring table needs (a
deblurrer helps only where its PSNR is above the input's). Rows
whose prediction is missing or unreadable are kept with status ``missing`` / ``error``, counted
and named in the summary, never silently dropped; the exit status is 0 as long as one pair was
scored, 1 if none was. Metric definitions, colour space and border crop: :mod:`deblurdiff.metrics`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from deblurdiff.choices import OPTIONAL_METRICS

if TYPE_CHECKING:
    import numpy as np

GROUP_KEYS = ("source", "split")

EVALUATE_DESCRIPTION = (
    "Score the predictions of a manifest split against its sharp images: PSNR and SSIM per pair and a table per "
    "source and split, each beside the blurry input's own scores (psnr_input, ssim_input: the baseline a "
    "deblurrer has to beat); optional LPIPS and no-reference metrics from local weights. Predictions come from "
    "--predictions (a 'deblurdiff infer --input MANIFEST' output) or are made first with --checkpoint. Pairs "
    "whose prediction is missing or unreadable are kept in the report as missing / error and named at the end."
)
EVALUATE_EXAMPLES = """\
examples:
  deblurdiff evaluate --manifest manifest.parquet --split test --predictions deblurred/ --out report.csv
  deblurdiff evaluate --manifest manifest.parquet --split test --checkpoint run/final --sampler ddim --steps 20 \\
      --out report.csv     # deblurs the split into report_predictions/ first
"""


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from deblurdiff.infer import add_model_arguments

    parser.add_argument("--manifest", required=True, metavar="M",
                        help="blurforge manifest (file, shard folder or synthesize output)")
    parser.add_argument("--split", default="test", help="split to score: train, val, test or all")
    parser.add_argument("--predictions", metavar="DIR",
                        help="folder of predictions named by key (from 'deblurdiff infer --input MANIFEST'); "
                             "with --checkpoint: where the predictions are written (default: REPORT_predictions/ "
                             "beside --out)")
    parser.add_argument("--out", required=True, metavar="CSV",
                        help="per-pair report; the summary goes to the .json beside it")
    parser.add_argument("--crop", type=int, default=0, metavar="PX", help="pixels removed from every border before scoring")
    parser.add_argument("--y-channel", action="store_true",
                        help="score PSNR/SSIM on BT.601 luma (MATLAB rgb2ycbcr) instead of RGB")
    parser.add_argument("--metrics", metavar="NAMES",
                        help="comma-separated optional metrics besides PSNR and SSIM: "
                             f"{', '.join(OPTIONAL_METRICS)} or 'all' (need local weights, see --metric-weights)")
    parser.add_argument("--metric-weights", metavar="DIR",
                        help="folder holding the optional metrics' weight files (never downloaded)")
    add_model_arguments(parser, checkpoint_required=False)


def _optional_names(text: str | None) -> list[str]:
    text = text or ""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(OPTIONAL_METRICS)
    unknown = [n for n in names if n not in OPTIONAL_METRICS]
    if unknown:
        raise ValueError(f"--metrics: unknown {', '.join(unknown)} — choose from {', '.join(OPTIONAL_METRICS)} or 'all'")
    return names


def find_prediction(pred_dir: Path, key: str) -> Path | None:
    """The prediction file of ``key``: ``prediction_name(key)``, or the same stem with another image extension."""
    from blurforge.imageio import IMAGE_EXTENSIONS
    from deblurdiff.infer import prediction_name

    exact = pred_dir / prediction_name(key)
    if exact.is_file():
        return exact
    stem = exact.name[: -len(".png")]
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = pred_dir / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def input_baseline(blur_path, sharp: np.ndarray, crop: int, y_channel: bool) -> dict:
    """``{"psnr_input", "ssim_input"}``: the blurry input scored against the sharp image (None
    if it cannot be read or differs in size)."""
    from blurforge.imageio import ImageReadError, read_image
    from deblurdiff.metrics import full_reference

    try:
        blurry = read_image(blur_path)[0]
    except ImageReadError:
        return {"psnr_input": None, "ssim_input": None}
    if blurry.shape != sharp.shape:
        return {"psnr_input": None, "ssim_input": None}
    scores = full_reference(blurry, sharp, crop=crop, y_channel=y_channel)
    return {"psnr_input": scores["psnr"], "ssim_input": scores["ssim"]}


def _mean(values: list[float]) -> float | None:
    import numpy as np

    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict], metric_names: list[str]) -> list[dict]:
    """Per (source, split) groups plus an ``all`` row: counts and metric means (ok rows only)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["split"]), []).append(r)
    out = []
    for (source, split), members in sorted(groups.items()) + [(("all", "all"), rows)]:
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"source": source, "split": split, "pairs": len(members), "scored": len(ok),
                 "missing": sum(r["status"] == "missing" for r in members),
                 "errors": sum(r["status"] == "error" for r in members)}
        for name in metric_names:
            entry[name] = _mean([r.get(name) for r in ok])
        out.append(entry)
    return out


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def format_table(summary: list[dict], metric_names: list[str]) -> str:
    cols = ["source", "split", "pairs", "scored", "missing", "errors"] + metric_names
    digits = {"psnr": 2, "psnr_input": 2}
    table = [[_fmt(s[c], digits.get(c, 4)) for c in cols] for s in summary]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    for row in table:
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def run_evaluate(args: argparse.Namespace) -> int:
    """Score the split; 0 when it finished (pairs without a usable prediction are in the report and
    named), 1 if no pair could be scored."""
    from tqdm import tqdm

    from blurforge.imageio import ImageReadError, read_image
    from blurforge.manifest import read_manifest, write_text_atomic
    from deblurdiff.metrics import Unavailable, full_reference, load_optional_metric, prepare

    import numpy as np

    t0 = time.perf_counter()
    out_csv = Path(args.out)
    optional = _optional_names(args.metrics)
    m = read_manifest(args.manifest)
    rows = [r for r in m.table.select(["key", "source", "split", "blur_path", "sharp_path", "width", "height"]).to_pylist()
            if args.split == "all" or r["split"] == args.split]
    if not rows:
        have = sorted(set(m.table.column("split").to_pylist()))
        raise ValueError(f"{args.manifest}: no rows in split {args.split!r} (splits present: {', '.join(have)})")

    if args.checkpoint:
        from deblurdiff.infer import run_infer

        pred_dir = Path(args.predictions) if args.predictions else out_csv.with_name(out_csv.stem + "_predictions")
        infer_args = argparse.Namespace(**vars(args))
        infer_args.input, infer_args.output, infer_args.save_intermediates = args.manifest, str(pred_dir), False
        run_infer(infer_args)  # failures are listed by infer and show up here as missing predictions
    elif args.predictions:
        pred_dir = Path(args.predictions)
        if not pred_dir.is_dir():
            raise FileNotFoundError(f"--predictions {pred_dir}: no such folder — run 'deblurdiff infer --input "
                                    f"{args.manifest} --output {pred_dir}' first, or pass --checkpoint")
    else:
        raise ValueError("pass --predictions DIR (existing predictions) or --checkpoint C (deblur first)")

    metrics = {}
    unavailable: dict[str, str] = {}
    device = "cuda" if getattr(args, "device", "auto") == "cuda" else "cpu"
    for name in optional:
        metric = load_optional_metric(name, args.metric_weights, device)
        if isinstance(metric, Unavailable):
            unavailable[name] = metric.reason
            print(f"evaluate: {name} unavailable: {metric.reason}", file=sys.stderr)
        else:
            metrics[name] = metric

    results = []
    for r in tqdm(rows, desc="evaluate", unit="pair", disable=getattr(args, "quiet", False)):
        res = {"key": r["key"], "source": r["source"], "split": r["split"], "status": "ok", "error": ""}
        pred_path = find_prediction(pred_dir, r["key"])
        if pred_path is None:
            res.update(status="missing", error=f"no prediction for key {r['key']!r} in {pred_dir}")
            results.append(res)
            continue
        try:
            pred = read_image(pred_path)[0]
            sharp = read_image(m.abspath(r["sharp_path"]))[0]
            if pred.shape != sharp.shape:
                raise ValueError(f"{pred_path}: size {pred.shape[1]}x{pred.shape[0]} but the sharp image is "
                                 f"{sharp.shape[1]}x{sharp.shape[0]}")
            res.update(full_reference(pred, sharp, crop=args.crop, y_channel=args.y_channel))
            res.update(input_baseline(m.abspath(r["blur_path"]), sharp, args.crop, args.y_channel))
            for name, metric in metrics.items():
                res[name] = metric(prepare(pred, args.crop).astype(np.float32),
                                   prepare(sharp, args.crop).astype(np.float32))
        except (ImageReadError, ValueError) as exc:
            res.update(status="error", error=str(exc))
        results.append(res)

    metric_names = ["psnr", "ssim", "psnr_input", "ssim_input"] + optional
    columns = ["key", "source", "split", "status"] + metric_names + ["error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for res in results:
        writer.writerow({c: ("" if res.get(c) is None else res.get(c, "")) for c in columns})
    write_text_atomic(out_csv, buf.getvalue())

    summary = summarize(results, metric_names)
    record = {
        "manifest": str(m.location),
        "split": args.split,
        "predictions": str(pred_dir),
        "color_space": "Y (BT.601, MATLAB rgb2ycbcr)" if args.y_channel else "RGB",
        "crop": args.crop,
        "psnr": "10 log10(1 / MSE), data range 1",
        "ssim": "Gaussian window sigma 1.5, population covariance, data range 1 (skimage)",
        "unavailable": unavailable,
        "summary": summary,
    }
    json_path = out_csv.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(_json_safe(record), indent=2) + "\n")

    print(format_table(summary, metric_names))
    overall = summary[-1]
    space = "Y" if args.y_channel else "RGB"
    print(f"evaluate: {overall['scored']} of {overall['pairs']} pairs scored ({space}, crop {args.crop}), "
          f"{overall['missing']} missing, {overall['errors']} errors, mean PSNR {_fmt(overall['psnr'], 2)} dB "
          f"(blurry input {_fmt(overall['psnr_input'], 2)} dB), SSIM {_fmt(overall['ssim'])} "
          f"(input {_fmt(overall['ssim_input'])}) in {time.perf_counter() - t0:.1f} s -> {out_csv}, {json_path}")
    unscored = [r for r in results if r["status"] != "ok"]
    if unscored:
        limit = 5
        print(f"evaluate: {len(unscored)} pair(s) not scored (status missing / error in {out_csv}):", file=sys.stderr)
        for r in unscored[:limit]:
            print(f"  {r['key']}: {r['error']}", file=sys.stderr)
        if len(unscored) > limit:
            print(f"  ... and {len(unscored) - limit} more", file=sys.stderr)
    if overall["scored"] == 0:
        print(f"evaluate: no pair could be scored — check --predictions {pred_dir} (file names are the keys, as "
              "'deblurdiff infer --input MANIFEST' writes them)", file=sys.stderr)
        return 1
    return 0
