"""deblurdiff evaluate on a manifest built with blurforge: known values, missing predictions, --checkpoint."""

import argparse
import csv
import json
import math
import shutil

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from blurforge.cli import main as blurforge
from blurforge.imageio import read_image
from blurforge.manifest import read_manifest
from deblurdiff.evaluate import add_evaluate_arguments, run_evaluate
from deblurdiff.infer import prediction_name
from deblurdiff.metrics import Unavailable, load_optional_metric, psnr


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, photos_dir, small_bank):
    d = tmp_path_factory.mktemp("data")
    assert blurforge(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank),
                      "--out", str(d / "pairs"), "--seed", "0", "--quiet"]) == 0
    out = d / "manifest.parquet"
    assert blurforge(["build-manifest", str(d / "pairs"), "--out", str(out), "--test-fraction", "0.5", "--quiet"]) == 0
    return out


def split_rows(manifest):
    m = read_manifest(manifest)
    return m, [r for r in m.table.to_pylist() if r["split"] == "test"]


def predictions_from(manifest, column, out_dir):
    m, rows = split_rows(manifest)
    out_dir.mkdir()
    for r in rows:
        shutil.copy(m.abspath(r[column]), out_dir / prediction_name(r["key"]))
    return m, rows


def evaluate(*argv):
    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    return run_evaluate(p.parse_args([*map(str, argv), "--quiet"]))


def read_report(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sharp_predictions_score_perfectly(manifest, tmp_path, capsys):
    _, rows = predictions_from(manifest, "sharp_path", tmp_path / "pred")
    assert rows, "the fixture manifest must have test rows"
    assert evaluate("--manifest", manifest, "--predictions", tmp_path / "pred", "--out", tmp_path / "r.csv") == 0
    report = read_report(tmp_path / "r.csv")
    assert len(report) == len(rows) and {r["split"] for r in report} == {"test"}
    assert all(math.isinf(float(r["psnr"])) and float(r["ssim"]) == pytest.approx(1.0) for r in report)
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["color_space"] == "RGB" and summary["crop"] == 0
    group = summary["summary"][0]
    assert (group["source"], group["split"], group["scored"], group["psnr"]) == ("uniform", "test", len(rows), "inf")
    out = capsys.readouterr().out
    assert "uniform" in out and "inf" in out and f"{len(rows)} of {len(rows)} pairs scored" in out


@pytest.mark.parametrize("extra", [[], ["--y-channel", "--crop", "4"]])
def test_blurry_predictions_match_independent_values(manifest, tmp_path, extra):
    m, rows = predictions_from(manifest, "blur_path", tmp_path / "pred")
    assert evaluate("--manifest", manifest, "--predictions", tmp_path / "pred", "--out", tmp_path / "r.csv", *extra) == 0
    got = {r["key"]: r for r in read_report(tmp_path / "r.csv")}
    for r in rows:
        blurry, sharp = (read_image(m.abspath(r[c]))[0].astype(np.float64) for c in ("blur_path", "sharp_path"))
        kw = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        if extra:
            blurry, sharp = (rgb2ycbcr(x)[4:-4, 4:-4, 0] / 255 for x in (blurry, sharp))
        else:
            kw["channel_axis"] = -1
        assert float(got[r["key"]]["psnr"]) == pytest.approx(peak_signal_noise_ratio(sharp, blurry, data_range=1.0),
                                                             abs=1e-6)
        assert float(got[r["key"]]["ssim"]) == pytest.approx(structural_similarity(sharp, blurry, **kw), abs=1e-6)
        assert 15 < float(got[r["key"]]["psnr"]) < 60 and float(got[r["key"]]["ssim"]) < 1
        # the blurry-input baseline, same colour space and crop: here the predictions are the inputs
        assert float(got[r["key"]]["psnr_input"]) == pytest.approx(
            peak_signal_noise_ratio(sharp, blurry, data_range=1.0), abs=1e-6)
        assert float(got[r["key"]]["ssim_input"]) == pytest.approx(structural_similarity(sharp, blurry, **kw), abs=1e-6)


def test_missing_predictions_are_counted_not_dropped(manifest, tmp_path, capsys):
    _, rows = predictions_from(manifest, "sharp_path", tmp_path / "pred")
    (tmp_path / "pred" / prediction_name(rows[0]["key"])).unlink()
    # partial success is success (exit 0), with the pair that was not scored named on the console
    assert evaluate("--manifest", manifest, "--predictions", tmp_path / "pred", "--out", tmp_path / "r.csv") == 0
    report = {r["key"]: r for r in read_report(tmp_path / "r.csv")}
    assert len(report) == len(rows)
    assert report[rows[0]["key"]]["status"] == "missing" and report[rows[0]["key"]]["psnr"] == ""
    assert json.loads((tmp_path / "r.json").read_text())["summary"][-1]["missing"] == 1
    out, err = capsys.readouterr()
    assert "1 missing" in out and f"  {rows[0]['key']}: no prediction for key" in err


def test_optional_metrics_unavailable_not_faked(manifest, tmp_path, capsys):
    predictions_from(manifest, "blur_path", tmp_path / "pred")
    assert evaluate("--manifest", manifest, "--predictions", tmp_path / "pred", "--out", tmp_path / "r.csv",
                    "--metrics", "lpips,musiq,niqe", "--metric-weights", tmp_path) == 0
    report = read_report(tmp_path / "r.csv")
    assert all(r["lpips"] == r["musiq"] == r["niqe"] == "" for r in report) and all(r["psnr"] for r in report)
    unavailable = json.loads((tmp_path / "r.json").read_text())["unavailable"]
    assert set(unavailable) == {"lpips", "musiq", "niqe"}
    for name, reason in unavailable.items():
        metric = load_optional_metric(name, None)
        assert isinstance(metric, Unavailable) and reason
    assert "unavailable" in capsys.readouterr().err


def test_checkpoint_runs_infer_first(manifest, tmp_path):
    from test_infer import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt")
    _, rows = split_rows(manifest)
    rc = evaluate("--manifest", manifest, "--checkpoint", ckpt, "--out", tmp_path / "r.csv",
                  "--sampler", "ddim", "--steps", "2")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "r_predictions").glob("*.png")) == sorted(
        prediction_name(r["key"]) for r in rows)
    report = read_report(tmp_path / "r.csv")
    assert all(r["status"] == "ok" and 0 < float(r["psnr"]) < 100 for r in report)


def test_psnr_definition():
    a = np.zeros((4, 4, 3))
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
