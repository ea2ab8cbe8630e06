"""``deblurdiff demo``: the whole mission end to end on the embedded default, on a CPU.

1. blurforge demo data (scikit-image photographs + a rendered video, shrunk to at most 192 px,
   split into train / val / test by the manifest);
2. **MSGD** (``msgd-cpu``, trained from scratch for a few minutes, fixed seed) → deblur the test
   split → evaluate: the deblurrer whose outputs should beat the blurry inputs;
3. **DeblurDiff** ``tiny`` preset, briefly → deblur → evaluate: a *pipeline check* only — its
   frozen VAE and UNet are random, so its outputs are noise; real runs use ``--preset sd21-base``;
4. ``results.png`` (blurry | MSGD | sharp, one row per test pair), ``deblurdiff_check.png``
   (the same for the pipeline check) and ``report.csv``: one row per test pair and model with
   ``model, key, psnr, ssim, psnr_input, ssim_input`` (``*_input``: the blurry input itself).
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

DEMO_MAX_SIDE = 192  # the demo's images: long side in pixels (blurforge's small mode)
MSGD_MODEL = "msgd-cpu"
CHECK_MODEL = "deblurdiff-tiny (pipeline check)"
REPORT_COLUMNS = ("model", "key", "psnr", "ssim", "psnr_input", "ssim_input")
# the pipeline check's sampler steps: its outputs are noise by design, so two steps (the sampler's
# loop, not only its first step) are enough; each step costs ~0.1 s per 192 px test image
CHECK_SAMPLING_STEPS = 2
# the demo's MSGD run: 64 px crops, batch 8 (more crops per step at the cost of 96 px x 4), Adam
# 2e-3 (4e-3: +0.07 dB instead of +0.6), cosine decay; README "Set up" gives the held-out result
MSGD_TRAIN = ["--preset", MSGD_MODEL, "--resolution", "64", "--batch-size", "8", "--lr", "2e-3", "--lr-warmup", "50",
              "--lr-decay", "cosine"]


def _caption(text: str, width: int, height: int = 18):
    import cv2
    import numpy as np

    strip = np.zeros((height, width, 3), np.uint8)
    cv2.putText(strip, text, (4, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced through ``items`` (first and last included; all if fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def results_sheet(manifest: Path, predictions: Path, report: Path, path: Path, model: str, rows: int = 12,
                  size: int = DEMO_MAX_SIDE) -> Path:
    """A PNG of ``rows`` test pairs evenly spaced by key (the same rule whatever the scores):
    blurry | deblurred | sharp at their own pixel size (``size``: the demo's long side), each row
    captioned with its PSNR against the sharp image (the blurry input's and the output's, from
    ``report``, a ``deblurdiff evaluate`` CSV)."""
    from blurforge.manifest import read_manifest
    from blurforge.summary import _thumb, tile_sheet
    from deblurdiff.infer import prediction_name

    m = read_manifest(manifest)
    scores = {r["key"]: r for r in read_report(report) if r["status"] == "ok"}
    test = [r for r in m.table.sort_by("key").to_pylist() if r["split"] == "test" and r["key"] in scores]
    if not test:
        raise ValueError(f"{report}: no scored predictions for the test split of {manifest}")
    chosen = spread(test, rows)
    lines = [[_caption(t, size) for t in ("blurry", model, "sharp")],
             [_caption(t, size) for t in (f"{len(chosen)} of {len(test)} test pairs,", "evenly spaced by key;",
                                          "PSNR vs the sharp image")]]
    for r in chosen:
        s = scores[r["key"]]
        gain = float(s["psnr"]) - float(s["psnr_input"])
        name = "/".join(r["key"].split("/")[-2:])
        lines.append([_caption(f"{float(s['psnr_input']):.2f} dB", size),
                      _caption(f"{float(s['psnr']):.2f} dB ({gain:+.2f})", size), _caption(name[-26:], size)])
        lines.append([_thumb(m.abspath(r["blur_path"]), size), _thumb(predictions / prediction_name(r["key"]), size),
                      _thumb(m.abspath(r["sharp_path"]), size)])
    return tile_sheet(lines, path)


def read_report(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def combined_report(reports: dict[str, Path], path: Path) -> dict[str, dict]:
    """Write ``path`` (REPORT_COLUMNS, one row per scored test pair and model) from per-model
    ``deblurdiff evaluate`` reports; returns {model: {"pairs", "psnr", "psnr_input", ...}} means."""
    from blurforge.manifest import write_text_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    means = {}
    for model, report in reports.items():
        rows = [r for r in read_report(report) if r["status"] == "ok"]
        for r in rows:
            writer.writerow({"model": model, **{c: r[c] for c in REPORT_COLUMNS[1:]}})
        means[model] = {"pairs": len(rows), "improved": sum(float(r["psnr"]) > float(r["psnr_input"]) for r in rows),
                        **{c: sum(float(r[c]) for r in rows) / len(rows) if rows else float("nan")
                                              for c in REPORT_COLUMNS[2:]}}
    write_text_atomic(path, buf.getvalue())
    return means


def failed_inputs(out: Path, models: dict[str, str]) -> str:
    """Where the demo's failed inputs are recorded: the data's errors tables (blurforge's demo),
    each model's ``infer.json`` failures and its report's unscored test pairs."""
    import json

    from blurforge.demo import failures_note

    notes = [failures_note(out / "data")]
    for model, name in models.items():
        record = out / name / "deblurred" / "infer.json"
        failures = json.loads(record.read_text()).get("failures", []) if record.is_file() else []
        unscored = [r for r in read_report(out / name / "report.csv") if r["status"] != "ok"]
        if failures or unscored:
            notes.append(f"{model}: {len(failures)} image(s) failed to deblur (listed in {record}), "
                         f"{len(unscored)} test pair(s) unscored (status in {out / name / 'report.csv'}).")
    return " ".join(notes)


def run_command(argv: list[str]) -> int:
    """Run one ``deblurdiff`` command — ``train``, ``infer`` or ``evaluate`` with its options —
    by calling its implementation (``run_train`` ...) on the options its own ``add_*_arguments``
    parses: the demo depends on the commands, never on :mod:`deblurdiff.cli` (which imports the
    demo). Errors propagate as the command raises them."""
    from deblurdiff.evaluate import add_evaluate_arguments, run_evaluate
    from deblurdiff.infer import add_infer_arguments, run_infer
    from deblurdiff.train import add_train_arguments, run_train

    commands = {"train": (add_train_arguments, run_train), "infer": (add_infer_arguments, run_infer),
                "evaluate": (add_evaluate_arguments, run_evaluate)}
    if not argv or argv[0] not in commands:
        raise ValueError(f"run_command: the first word must be one of {', '.join(commands)}, got {argv[:1]}")
    add_arguments, run = commands[argv[0]]
    parser = argparse.ArgumentParser(prog=f"deblurdiff {argv[0]}", allow_abbrev=False)
    add_arguments(parser)
    return int(run(parser.parse_args(argv[1:])) or 0)


def _run(title: str, argv: list[str]) -> int:
    print(f"\ndemo: {title}\n$ deblurdiff {' '.join(argv)}")
    rc = run_command(argv)
    if rc != 0:
        print(f"demo: step 'deblurdiff {argv[0]}' failed with exit code {rc}")
    return rc


def _model_steps(out: Path, manifest: Path, name: str, train_args: list[str], q: list[str], label: str,
                 infer_args: list[str]) -> list[tuple[str, list[str]]]:
    d = out / name
    return [
        (f"train {label}", ["train", "--manifest", str(manifest), *train_args, "--output-dir", str(d / "train"),
                            "--checkpoint-every", "0", "--val-every", "0", "--log-every", "10", "--num-workers", "0",
                            "--seed", "0", *q]),
        (f"deblur the test split with {label}",
         ["infer", "--checkpoint", str(d / "train" / "final"), "--input", str(manifest), "--split", "test",
          "--output", str(d / "deblurred"), "--seed", "0", "--device", "cpu", *infer_args, *q]),
        (f"evaluate {label}",
         ["evaluate", "--manifest", str(manifest), "--split", "test", "--predictions", str(d / "deblurred"),
          "--out", str(d / "report.csv"), *q]),
    ]


def run_demo(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(args, "threads", threads))
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _run_demo(args: argparse.Namespace) -> int:
    from blurforge.demo import run_demo as data_demo
    from blurforge.manifest import read_manifest

    t0 = time.perf_counter()
    out = Path(args.out)
    q = ["--quiet"] if args.quiet else []
    print("demo: 1/3 data — blurforge's demo pipeline")
    rc = data_demo(out / "data", quiet=args.quiet, max_side=DEMO_MAX_SIDE)
    if rc:
        return rc
    manifest = out / "data" / "manifest.parquet"
    steps = _model_steps(out, manifest, "msgd", [*MSGD_TRAIN, "--max-steps", str(args.steps)], q,
                         f"2/3 MSGD ({MSGD_MODEL}, trained from scratch)", ["--samples", str(args.samples)])
    steps += _model_steps(
        out, manifest, "deblurdiff",
        ["--preset", "tiny", "--resolution", "64", "--batch-size", "4", "--max-steps", str(args.check_steps),
         "--lr", "1e-3"], q, "3/3 DeblurDiff tiny (pipeline check: random frozen SD parts)",
        ["--sampler", "ddim", "--steps", str(CHECK_SAMPLING_STEPS)])
    t_models = time.perf_counter()
    for title, argv in steps:
        if _run(title, argv) != 0:
            return 1
    sheet = results_sheet(manifest, out / "msgd" / "deblurred", out / "msgd" / "report.csv", out / "results.png",
                          f"MSGD {MSGD_MODEL}")
    check = results_sheet(manifest, out / "deblurdiff" / "deblurred", out / "deblurdiff" / "report.csv",
                          out / "deblurdiff_check.png", "DeblurDiff tiny (check)")
    means = combined_report({MSGD_MODEL: out / "msgd" / "report.csv",
                             CHECK_MODEL: out / "deblurdiff" / "report.csv"}, out / "report.csv")
    msgd, dd = means[MSGD_MODEL], means[CHECK_MODEL]
    test_sources = len({r["group"] for r in read_manifest(manifest).table.to_pylist() if r["split"] == "test"})
    verdict = "above" if msgd["psnr"] > msgd["psnr_input"] else "NOT above (train longer: --steps)"
    print(
        f"\ndemo: done in {time.perf_counter() - t0:.0f} s ({time.perf_counter() - t_models:.0f} s for the models). "
        f"Held-out test pairs: {msgd['pairs']} from {test_sources} sources (photos and clips split by source); "
        f"MSGD mean PSNR {msgd['psnr']:.2f} dB, {verdict} the blurry input's {msgd['psnr_input']:.2f} dB "
        f"(SSIM {msgd['ssim']:.3f} vs {msgd['ssim_input']:.3f}; {msgd['improved']} of {msgd['pairs']} pairs "
        f"improved); DeblurDiff "
        f"tiny pipeline check {dd['psnr']:.2f} dB (random frozen SD parts: noise by design). Open {sheet} "
        f"(blurry | MSGD | sharp), {check}, {out / 'data' / 'pairs.png'}; per-pair scores in {out / 'report.csv'}. "
        + failed_inputs(out, {MSGD_MODEL: "msgd", CHECK_MODEL: "deblurdiff"})
    )
    return 0
