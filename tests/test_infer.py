"""deblurdiff infer on the tiny preset: padding, tiling without seams, colour fix, determinism, safety."""

import argparse
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from blurforge.imageio import read_image
from deblurdiff.infer import (
    Deblurrer, InferSettings, adain_color_fix, add_infer_arguments, prediction_name, resolve_dtype, run_infer,
    wavelet_color_fix, wavelet_split,
)
from deblurdiff.model import DeblurDiff
from deblurdiff.presets import build_model
from deblurdiff.tiling import pad_to_multiple, size_multiple, tile_starts, tiled_decode, tiled_encode

from conftest import photo, write_png


def make_checkpoint(path):
    model = build_model("tiny", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.save_pretrained(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def model(ckpt):
    return DeblurDiff.from_pretrained(ckpt).eval()


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    write_png(d / "astronaut.png", photo("astronaut", (38, 30)))  # not a multiple of 4: padded, cropped back
    write_png(d / "sub" / "coffee.png", photo("coffee", (24, 24)))
    return d


def infer(*argv):
    p = argparse.ArgumentParser()
    add_infer_arguments(p)
    return run_infer(p.parse_args([*map(str, argv), "--steps", "2", "--quiet"]))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_identical_outputs_sizes_kept(ckpt, model, inputs, tmp_path):
    assert infer("--checkpoint", ckpt, "--input", inputs, "--output", tmp_path / "a", "--seed", "3") == 0
    assert infer("--checkpoint", ckpt, "--input", inputs, "--output", tmp_path / "b", "--seed", "3") == 0
    for rel, (w, h) in (("astronaut.png", (38, 30)), ("sub/coffee.png", (24, 24))):
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        assert digest(a) == digest(b)
        assert read_image(a)[0].shape == (h, w, 3)
    img = read_image(inputs / "sub" / "coffee.png")[0]
    run = lambda seed: Deblurrer(model, InferSettings(steps=2, seed=seed))([img], ["k"])[0]  # noqa: E731
    assert np.array_equal(run(3), run(3)) and not np.array_equal(run(3), run(4))
    record = json.loads((tmp_path / "a" / "infer.json").read_text())
    assert record["images"] == 2 and record["failures"] == []


def test_refuses_to_write_into_the_input_folder(ckpt, inputs):
    before = {p: digest(p) for p in inputs.rglob("*.png")}
    for out in (inputs, inputs / "sub"):
        with pytest.raises(ValueError, match="input folder"):
            infer("--checkpoint", ckpt, "--input", inputs, "--output", out)
    with pytest.raises(ValueError, match="would overwrite the input"):  # a single file may go beside itself, not over
        infer("--checkpoint", ckpt, "--input", inputs / "astronaut.png", "--output", inputs)
    assert {p: digest(p) for p in inputs.rglob("*.png")} == before


def test_unreadable_inputs_reported_and_skipped(ckpt, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"not an image")
    rc = infer("--checkpoint", ckpt, "--input", inputs, "--output", tmp_path / "out", "--sampler", "ddim")
    assert rc == 0  # partial success is success; the failure is listed and named
    assert (tmp_path / "out" / "astronaut.png").is_file() and (tmp_path / "out" / "sub" / "coffee.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists()
    failures = json.loads((tmp_path / "out" / "infer.json").read_text())["failures"]
    assert len(failures) == 1 and "broken.png" in failures[0]["input"]
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "2 of 3 image(s) deblurred, 1 failed" in captured.out


def test_save_intermediates(ckpt, inputs, tmp_path):
    out = tmp_path / "out"
    assert infer("--checkpoint", ckpt, "--input", inputs / "astronaut.png", "--output", out,
                 "--save-intermediates", "--sampler", "dpmsolver", "--color-fix", "wavelet") == 0
    names = sorted(p.name for p in (out / "intermediates" / "astronaut").iterdir())
    assert names == ["step-000_z0.png", "step-000_zs.png", "step-001_z0.png", "step-001_zs.png"]
    assert read_image(out / "intermediates" / "astronaut" / "step-000_zs.png")[0].shape == (30, 38, 3)


def test_bf16_runs_and_fp16_on_cpu_is_explained(ckpt, inputs, tmp_path):
    assert infer("--checkpoint", ckpt, "--input", inputs / "sub", "--output", tmp_path / "o", "--dtype", "bf16") == 0
    dtype, note = resolve_dtype("fp16", torch.device("cpu"))
    assert note and ("slow" in note or "falling back" in note)


def test_tiled_output_has_no_seams(model):
    """Tiled (128 px tiles, 64 px overlap) vs untiled: close overall, no step at tile borders."""
    img = photo("astronaut", (256, 192)).astype(np.float32) / 255
    run = lambda tile, overlap: Deblurrer(model, InferSettings(  # noqa: E731
        sampler="ddim", steps=2, tile_size=tile, tile_overlap=overlap, color_fix="none"))([img], ["k"])[0]
    full, tiled, hard = run(None, 0), run(128, 64), run(128, 0)

    def border_ratio(out):
        gx = np.abs(np.diff(out - full, axis=1)).mean(axis=(0, 2))  # column-to-column step of the difference
        starts = tile_starts(256, 128, 64 if out is tiled else 0)
        borders = sorted({s for s in starts if s > 0} | {s + 128 for s in starts if s + 128 < 256})
        return max(gx[c - 1] for c in borders) / np.median(gx)

    assert np.abs(tiled - full).mean() < 0.04
    assert border_ratio(tiled) < 2.0
    assert border_ratio(hard) > 3.0  # control: hard tiles (no overlap) do show seams


def test_tiled_vae_close_to_untiled(model):
    x = torch.from_numpy(photo("chelsea", (384, 256)).astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        z, zt = model.encode(x), tiled_encode(model, x, 192, 96)
        y, yt = model.decode(z), tiled_decode(model, z, 192, 96)
    # the random tiny VAE's GroupNorm sees per-tile statistics: bounded, not exact
    assert (z - zt).abs().mean() < 0.5 * z.abs().mean()
    assert (y - yt).abs().mean() < 0.1


def test_padding_multiple_and_reflection(model):
    assert size_multiple(model) == 16  # VAE ×8, 2-level UNet/LKPN
    sd = SimpleNamespace(vae_scale_factor=8, unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=[1] * 4)),
                         controlnet=SimpleNamespace(config=SimpleNamespace(block_out_channels=[1] * 4)), lkpn=None)
    assert size_multiple(sd) == 64
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    padded, (h, w) = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8) and (h, w) == (5, 7)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])  # reflected, not zeros
    assert pad_to_multiple(torch.rand(1, 3, 2, 2), 64)[0].shape == (1, 3, 64, 64)  # tiny image, repeated reflection


def test_color_fixes():
    g = torch.Generator().manual_seed(0)
    ref = 0.3 + 0.4 * torch.rand(1, 3, 32, 32, generator=g)
    out = 0.5 + 0.1 * torch.rand(1, 3, 32, 32, generator=g)
    fixed = adain_color_fix(out, ref)
    assert torch.allclose(fixed.mean((-2, -1)), ref.mean((-2, -1)), atol=1e-4)
    assert torch.allclose(fixed.std((-2, -1)), ref.std((-2, -1)), atol=1e-3)
    w = wavelet_color_fix(out, ref)
    assert torch.allclose(wavelet_split(w)[1], wavelet_split(ref)[1], atol=0.02)  # low frequencies: the input's
    assert torch.allclose(wavelet_split(w)[0], wavelet_split(out)[0], atol=0.02)  # details: the output's
    assert torch.allclose(wavelet_color_fix(ref, ref), ref, atol=1e-6)


def test_prediction_names_are_safe_and_distinct():
    names = {prediction_name(k) for k in ("a/b", "a_b", "a:b", ".x", "uniform/astronaut.png/0")}
    assert len(names) == 5 and "a_b.png" in names
    assert all("/" not in n and not n.startswith(".") for n in names)
