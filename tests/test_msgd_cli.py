"""MSGD through the shared CLI: train (exact resume, option checks), infer (any size, tiles,
sample averaging, intermediates, determinism), evaluate (the blurry-input baseline)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from blurforge.imageio import read_image
from deblurdiff.infer import InferSettings, add_infer_arguments, run_infer
from deblurdiff.msgd import MSGD, build_msgd
from deblurdiff.msgd_infer import MSGDDeblurrer, sample_images
from deblurdiff.train import add_train_arguments, main_for_tests, train

from conftest import perturb, photo, write_png

pytestmark = pytest.mark.usefixtures("torch_one_thread", "fresh_accelerate_state")

BASE = ["--preset", "msgd-tiny", "--resolution", "32", "--batch-size", "2", "--log-every", "1", "--val-every", "0",
        "--num-workers", "0", "--lr", "1e-3", "--quiet"]


def run(manifest, out, *extra):
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_train_arguments(p)
    return train(p.parse_args([str(a) for a in ("--manifest", manifest, "--output-dir", out, *BASE, *extra)]))


def records(out) -> list[dict]:
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_train_resumes_exactly_and_logs_every_scale(pairs_dir, tmp_path):
    flags = ("--checkpoint-every", 2, "--denoise-ramp", 3)  # the ramp makes the step matter
    straight = run(pairs_dir, tmp_path / "a", "--max-steps", 4, *flags)
    run(pairs_dir, tmp_path / "b", "--max-steps", 2, *flags)
    resumed = run(pairs_dir, tmp_path / "b", "--max-steps", 4, "--resume", "latest", *flags)
    assert resumed.start_step == 2
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ra, rb = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb] and len(ra) == 4
    assert {"loss_denoise", "loss_regression", "loss_regression_s2", "loss_regression_s4",
            "loss_regression_s8"} <= set(ra[0])
    assert ra[0]["loss"] == pytest.approx(ra[0]["loss_regression"])  # step 0 of the ramp: regression only
    final = MSGD.from_pretrained(tmp_path / "a" / "final")
    assert final.config.denoise_ramp_steps == 3 and final.config.preset == "msgd-tiny"


def test_train_ablation_switches_reach_the_model(pairs_dir, tmp_path):
    result = run(pairs_dir, tmp_path / "r", "--max-steps", 1, "--guidance", "input", "--scales", "4",
                 "--guidance-target", "rgb", "--regression-weight", "0.5", "--prediction", "v_prediction",
                 "--diffusion-target", "residual", "--checkpoint-every", 0)
    c = result.model.config
    assert (c.guidance, c.scales, c.target_color, c.regression_weight, c.prediction_type, c.target) == (
        "input", (4,), "rgb", 0.5, "v_prediction", "residual")


@pytest.mark.parametrize("extra, message", [
    (["--preset", "tiny", "--guidance", "none"], "only apply to MSGD presets"),
    (["--pretrained", "/models/sd"], "only apply to DeblurDiff presets"),
    (["--variant", "blurry"], "only apply to DeblurDiff presets"),
    (["--resolution", "36"], "multiple of 8"),
])
def test_train_refuses_options_of_the_other_family(pairs_dir, tmp_path, capsys, extra, message):
    argv = ["--manifest", str(pairs_dir), "--output-dir", str(tmp_path / "x"), *BASE, "--max-steps", "1", *extra]
    assert main_for_tests(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------- infer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = build_msgd("msgd-tiny", target="residual", prediction_type="sample", seed=0)
    perturb(model, seed=1, scale=0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("msgd") / "ckpt")


def infer(*argv):
    p = argparse.ArgumentParser()
    add_infer_arguments(p)
    return run_infer(p.parse_args([*map(str, argv), "--quiet"]))


def test_infer_any_size_intermediates_and_settings(ckpt, tmp_path):
    write_png(tmp_path / "in" / "astronaut.png", photo("astronaut", (37, 29)))  # padded to 40x32, cropped back
    out = tmp_path / "out"
    assert infer("--checkpoint", ckpt, "--input", tmp_path / "in" / "astronaut.png", "--output", out,
                 "--save-intermediates") == 0
    assert read_image(out / "astronaut.png")[0].shape == (29, 37, 3)
    inter = out / "intermediates" / "astronaut"
    names = sorted(p.name for p in inter.iterdir())
    assert names == ["guidance-s2.png", "guidance-s4.png", "guidance-s8.png",
                     "step-000_x0.png", "step-001_x0.png", "step-002_x0.png", "step-003_x0.png"]
    assert all(read_image(inter / n)[0].shape == (29, 37, 3) for n in names)
    settings = json.loads((out / "infer.json").read_text())["settings"]
    # unset options take the MSGD preset's defaults: ddim, 4 steps, no colour fix
    assert (settings["sampler"], settings["steps"], settings["color_fix"], settings["samples"]) == ("ddim", 4, "none", 1)


def test_sample_averaging_is_the_mean_of_the_keyed_samples(ckpt):
    from blurforge.seeding import seed_for

    model = MSGD.from_pretrained(ckpt).eval()
    img = photo("coffee", (48, 32)).astype(np.float32) / 255
    settings = InferSettings(sampler="ddim", steps=3, seed=7, tile_size=None, color_fix="none", samples=3)
    avg = MSGDDeblurrer(model, settings)([img], ["k"])[0]
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    singles = []
    for key in ("k", "k#sample1", "k#sample2"):
        with torch.no_grad():
            singles.append(sample_images(model, x, 3, torch.Generator().manual_seed(seed_for(7, key)), "ddim"))
    expected = torch.stack(singles).mean(0)[0].permute(1, 2, 0).numpy()
    assert np.abs(avg - expected).max() < 1e-5
    assert float((singles[0] - singles[1]).abs().max()) > 1e-3  # the samples differ: averaging does something


def test_infer_is_deterministic_per_key_and_tiles_blend(ckpt, tmp_path):
    model = MSGD.from_pretrained(ckpt).eval()
    img = photo("chelsea", (64, 48)).astype(np.float32) / 255
    run = lambda tile, keys=("a",), imgs=(img,): MSGDDeblurrer(model, InferSettings(  # noqa: E731
        sampler="ddim", steps=2, tile_size=tile, tile_overlap=16, color_fix="none"))(list(imgs), list(keys))
    full = run(None)[0]
    assert np.array_equal(full, run(None)[0])  # same seed, key and batch: identical
    # the key decides the noise, not the position in the batch (equal up to the batch's float rounding)
    assert np.abs(full - run(None, ("b", "a"), (img, img))[1]).max() < 1e-5
    assert np.abs(full - run(None, ("b",))[0]).max() > 1e-3
    tiled = run(32)[0]
    assert 0 < np.abs(tiled - full).mean() < 0.05
    with pytest.raises(ValueError, match="multiples of 8"):
        run(36)


def test_infer_refuses_deblurdiff_only_options(ckpt, tmp_path):
    write_png(tmp_path / "in" / "coffee.png", photo("coffee", (24, 16)))
    with pytest.raises(ValueError, match="no pretrained"):
        infer("--checkpoint", ckpt, "--input", tmp_path / "in", "--output", tmp_path / "o", "--pretrained", "/sd")


def test_evaluate_with_an_msgd_checkpoint_reports_the_input_baseline(ckpt, pairs_dir, tmp_path):
    from blurforge.manifest import read_manifest
    from deblurdiff.evaluate import add_evaluate_arguments, run_evaluate
    from deblurdiff.metrics import psnr

    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    args = p.parse_args(["--manifest", str(pairs_dir), "--split", "train", "--checkpoint", str(ckpt),
                         "--out", str(tmp_path / "r.csv"), "--steps", "2", "--quiet"])
    assert run_evaluate(args) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    m = read_manifest(pairs_dir)
    for r in m.table.to_pylist():
        blurry, sharp = (read_image(m.abspath(r[c]))[0] for c in ("blur_path", "sharp_path"))
        assert float(rows[r["key"]]["psnr_input"]) == pytest.approx(psnr(blurry, sharp), abs=1e-6)
        assert float(rows[r["key"]]["psnr"]) != pytest.approx(float(rows[r["key"]]["psnr_input"]), abs=1e-3)
