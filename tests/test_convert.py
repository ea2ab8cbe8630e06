"""The released DeblurDiff checkpoint (kkkls/DeblurDiff model.pth): conversion, equality with the
released code's outputs, end-to-end inference, refusal of other files.

The fixtures are facts only (tests/released_fixture.py): the released state_dict's tensor names and
shapes at full size and at a tiny width, and outputs their code computed for the tiny model filled
with seeded random values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from blurforge.imageio import read_image
from conftest import photo, write_png
from deblurdiff.cli import main as deblurdiff
from deblurdiff.convert import (
    EMPTY_PROMPT_IDS, ReleasedCheckpointError, build_model, build_networks, convert_state_dict, load_released,
)
from deblurdiff.model import ConditionConv, DeblurDiff
from deblurdiff.presets import RELEASED_SETTINGS, default_lkpn_config
from deblurdiff.sampling import make_scheduler
from released_fixture import DATA, fixture_record, key_shapes, meta_state_dict, random_state_dict


@pytest.fixture(scope="module")
def tiny_sd():
    return random_state_dict(key_shapes("tiny"))


@pytest.fixture(scope="module")
def tiny_model(tiny_sd):
    model, _ = build_model(convert_state_dict(tiny_sd))
    return model


@pytest.fixture(scope="module")
def reference():
    return load_file(DATA / "released_reference_tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_pth(tiny_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "model.pth"
    torch.save(tiny_sd, path)
    return path


def close(ours, theirs, what):
    """Equal to fp32 round-off, relative to the reference's magnitude."""
    scale = float(theirs.abs().max())
    diff = float((ours.float() - theirs).abs().max())
    assert diff <= 1e-5 * max(scale, 1.0), f"{what}: max|Δ| {diff:.3g} (max|ref| {scale:.3g})"


def test_full_size_layout_converts_and_loads_strictly():
    """Every tensor of the full-size released state_dict (meta tensors: names and shapes only) lands
    in a network built at the size the shapes imply, strictly, with nothing left over."""
    shapes = key_shapes("full")
    parts = convert_state_dict(meta_state_dict(shapes))
    nets = build_networks(parts)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    group = lambda g: sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(g + "."))  # noqa: E731
    assert counts["unet"] == group("unet") == 865_910_724
    assert counts["lkpn"] == group("kpn") == 144_907_236
    assert counts["controlnet"] == group("controlnet") == 363_164_800
    assert counts["vae"] == group("vae") == 83_653_863
    assert counts["text_encoder"] == group("clip") - parts.unused_values  # the last layer, projection, logit scale
    # SD 2.1-base's UNet (stabilityai/stable-diffusion-2-1-base unet/config.json)
    unet = nets["unet"].config
    assert tuple(unet.block_out_channels) == (320, 640, 1280, 1280) and unet.cross_attention_dim == 1024
    assert tuple(unet.attention_head_dim) == (5, 10, 20, 20) and unet.use_linear_projection
    assert nets["vae"].config.scaling_factor == 0.18215 and tuple(nets["vae"].config.block_out_channels) == (
        128, 256, 512, 512)
    assert nets["text_encoder"].config.num_hidden_layers == 23 and nets["text_encoder"].config.hidden_size == 1024
    # the released ControlNet input: one conv over cat(z_t, z_lq, z_s), split into conv_in + ConditionConv
    cn = nets["controlnet"]
    assert isinstance(cn.controlnet_cond_embedding, ConditionConv)
    assert cn.conv_in.weight.shape == (320, 4, 3, 3) and cn.controlnet_cond_embedding.weight.shape == (320, 8, 3, 3)
    # the LKPN is the paper-size LKPN this project builds for sd21-base
    want, got = default_lkpn_config("sd21-base", 1024), nets["lkpn"].config
    assert list(got.block_out_channels) == want.pop("block_out_channels")
    assert all(got[k] == v for k, v in want.items())
    assert nets["lkpn"].config.kernel_size == 5


def test_tiny_released_model_matches_the_released_code(tiny_model, reference):
    """The converted tiny model reproduces the released code's outputs on the same weights and inputs:
    text embedding, VAE posterior (blurry image in [0, 1]) and decode, LKPN kernels, z_s, every
    ControlNet residual, eps, the 50 respaced timesteps and three full DDPM steps."""
    m, ref = tiny_model, reference
    assert ref["empty_prompt_ids"][0].tolist() == EMPTY_PROMPT_IDS
    with torch.no_grad():
        close(m.empty_text_emb, ref["text_emb"], "text embedding")
        dist = m.vae.encode(ref["lq"]).latent_dist
        close(dist.mode() * 0.18215, ref["lq_mean"], "posterior mean of the [0, 1] blurry image")
        close(dist.std * 0.18215, ref["lq_std"], "posterior std")
        close(m.encode(ref["lq"], torch.Generator().manual_seed(7), blurry=True), ref["z_lq_sample_seed7"],
              "posterior draw")
        z_lq, z_t, t = ref["z_lq_sample_seed7"], ref["z_t"], torch.tensor([500])
        close(m._decode_raw(z_lq), ref["decoded"], "decode")
        z_s, kernels = m.condition(z_lq, z_t, t)
        close(kernels, ref["kernels"], "LKPN kernels")
        close(z_s, ref["z_s"], "z_s")
        down, mid = m.controlnet(z_t, t, m.empty_text_emb, controlnet_cond=torch.cat([z_lq, z_s], 1),
                                 return_dict=False)
        for i, r in enumerate([*down, mid]):
            close(r, ref[f"control_{i}"], f"ControlNet residual {i}")
        eps, _ = m.predict_eps(z_t, t, z_lq)
        close(eps, ref["eps"], "eps")
        sched = make_scheduler("ddpm", m.scheduler, 50, timestep_spacing=m.config.timestep_spacing)
        assert sched.timesteps.tolist() == ref["timesteps_50"].tolist()
        for i in (0, 25, 49):
            ti = sched.timesteps[i]
            pred, _ = m.predict_eps(z_t, ti, z_lq)
            out = sched.step(pred, ti, z_t, generator=torch.Generator().manual_seed(100 + i)).prev_sample
            close(out, ref[f"step_{i}"], f"DDPM step {i} (t={int(ti)})")


def test_lkpn_zero_init_matches_the_released_lkpn():
    """A fresh LKPN with zero_init='residual-branches' starts with exactly the tensors at zero that the
    released LKPN's LDM UNet zero-initialises (ResBlock conv2, transformer proj_out, output conv;
    norm biases), mapped through the converter's names."""
    record = fixture_record("tiny")
    zero = set(record["kpn_zero_at_init"])
    shapes = key_shapes("tiny")
    marked = {k: (torch.zeros(s) if k in zero else torch.ones(s)) for k, s in shapes.items()}
    parts = convert_state_dict(marked)
    want = {k for k, v in parts.lkpn[1].items() if not v.any()}
    from deblurdiff.lkpn import LKPN

    fresh = LKPN(**parts.lkpn[0])
    assert fresh.config.zero_init == RELEASED_SETTINGS["lkpn"]["zero_init"]
    got = {k for k, v in fresh.state_dict().items() if not v.any()}
    assert got == want and len(got) == len(zero)
    output_only = LKPN(**{**parts.lkpn[0], "zero_init": "output"})
    assert {k for k, v in output_only.state_dict().items() if not v.any()} < want


def test_convert_then_infer_end_to_end(tiny_pth, tiny_model, tmp_path, capsys):
    out = tmp_path / "converted"
    assert deblurdiff(["convert", "--checkpoint", str(tiny_pth), "--output", str(out), "--quiet"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    record = json.loads((out / "deblurdiff.json").read_text())
    assert record["frozen_parts_included"] and record["converted_from"]["bytes"] == tiny_pth.stat().st_size
    for key in ("controlnet_input", "blurry_range", "posterior", "timestep_spacing"):
        assert record["config"][key] == RELEASED_SETTINGS[key]
    assert (out / "text_encoder" / "config.json").is_file()
    loaded = DeblurDiff.from_pretrained(out)
    g = torch.Generator().manual_seed(3)
    z_t, z_lq = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():  # equal up to the summation order of differently laid-out weights
        torch.testing.assert_close(loaded.predict_eps(z_t, 321, z_lq)[0], tiny_model.predict_eps(z_t, 321, z_lq)[0],
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(loaded.empty_text_emb, tiny_model.empty_text_emb)

    write_png(tmp_path / "in" / "street.png", photo("astronaut", (20, 18)))
    common = ["--input", str(tmp_path / "in" / "street.png"), "--steps", "2", "--quiet"]
    assert deblurdiff(["infer", "--checkpoint", str(out), "--output", str(tmp_path / "a"), *common]) == 0
    assert deblurdiff(["infer", "--checkpoint", str(tiny_pth), "--output", str(tmp_path / "b"), *common]) == 0
    a, b = (tmp_path / d / "street.png" for d in ("a", "b"))
    assert np.abs(read_image(a)[0] - read_image(b)[0]).max() <= 1 / 255  # folder == on-the-fly conversion
    info = json.loads((tmp_path / "a" / "infer.json").read_text())
    assert info["settings"]["timestep_spacing"] == "linspace" and info["images"] == 1
    assert deblurdiff(["infer", "--checkpoint", str(out), "--output", str(tmp_path / "c"), *common,
                       "--timestep-spacing", "leading"]) == 0
    assert json.loads((tmp_path / "c" / "infer.json").read_text())["settings"]["timestep_spacing"] == "leading"
    assert np.abs(read_image(tmp_path / "c" / "street.png")[0] - read_image(a)[0]).max() > 2 / 255


def test_safetensors_input_gives_the_same_model(tiny_sd, tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(tiny_sd, path)
    model, _ = load_released(path)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_eps(z, 10, z)[0], tiny_model.predict_eps(z, 10, z)[0],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("no-kpn", r"missing key groups: kpn\.\*.*DiffBIR"),
    ("sd", r"missing key groups: unet\.\*, vae\.\*, clip\.\*, controlnet\.\*, kpn\.\*; unexpected key groups: "
           r"cond_stage_model\.\*, first_stage_model\.\*, model\.\*.*Stable Diffusion"),
    ("extra", r"unexpected key groups: optimizer\.\*"),
    ("narrow-controlnet", r"controlnet\.\*: first conv reads 4 channels"),
    ("lkpn-width", r"kpn\.\*: .*not the released DeblurDiff layout"),
])
def test_other_files_are_refused_with_the_key_groups_named(case, message, tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    if case == "no-kpn":
        sd = {k: v for k, v in sd.items() if not k.startswith("kpn.")}
    elif case == "sd":
        sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), "first_stage_model.x": torch.zeros(1),
              "cond_stage_model.y": torch.zeros(1)}
    elif case == "extra":
        sd["optimizer.state"] = torch.zeros(1)
    elif case == "narrow-controlnet":
        sd["controlnet.input_blocks.0.0.weight"] = sd["controlnet.input_blocks.0.0.weight"][:, :4]
    elif case == "lkpn-width":
        sd["kpn.unet.out.2.weight"] = torch.zeros(7, 64, 3, 3)
        sd["kpn.unet.out.2.bias"] = torch.zeros(7)
    path = tmp_path / "model.pth"
    torch.save(sd, path)
    with pytest.raises(ReleasedCheckpointError, match=message):
        load_released(path)


def test_cli_reports_a_refused_file(tmp_path, capsys):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    assert deblurdiff(["convert", "--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "notes.pth" in err and "released model.pth" in err
    assert not (tmp_path / "out").exists()


def test_window_starts_follow_the_released_grids():
    from deblurdiff.windows import window_starts

    # released SpatialTransformer.grids: (n - 1) // k + 1 windows, stride ceil((n - k) / (m - 1)), last at the border
    assert window_starts(64, 64) == [0] and window_starts(40, 64) == [0]
    assert window_starts(70, 64) == [0, 6] and window_starts(35, 32) == [0, 3]
    assert window_starts(200, 64) == [0, 46, 92, 136]


def test_attention_windows_match_the_released_code_beyond_64_latent_pixels(tiny_model, reference):
    """At a 70x66 latent the released attention layers run in 64/32-pixel windows; the converted model
    (attention_window 64) reproduces eps and z_s, and global attention would not."""
    from deblurdiff.windows import set_attention_windows

    assert tiny_model.config.attention_window == RELEASED_SETTINGS["attention_window"] == 64
    g = torch.Generator().manual_seed(1)
    z_lq, z_t = torch.randn(1, 4, 70, 66, generator=g), torch.randn(1, 4, 70, 66, generator=g)
    with torch.no_grad():
        eps, z_s = tiny_model.predict_eps(z_t, 700, z_lq)
        close(eps, reference["windows_eps"], "eps with attention windows")
        close(z_s, reference["windows_z_s"], "z_s with attention windows")
        pair, _ = tiny_model.predict_eps(torch.cat([z_t, z_t.flip(-1)]), 700, torch.cat([z_lq, z_lq.flip(-1)]))
        torch.testing.assert_close(pair[:1], eps, rtol=1e-5, atol=1e-5)  # each image of a batch windowed alone
        for net, per_level in ((tiny_model.unet, True), (tiny_model.controlnet, False), (tiny_model.lkpn.unet, True)):
            set_attention_windows(net, None, per_level)
        try:
            global_eps, _ = tiny_model.predict_eps(z_t, 700, z_lq)
        finally:
            for net, per_level in ((tiny_model.unet, True), (tiny_model.controlnet, False),
                                   (tiny_model.lkpn.unet, True)):
                set_attention_windows(net, 64, per_level)
    assert (global_eps - reference["windows_eps"]).abs().max() > 1e-2
