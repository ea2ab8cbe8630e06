"""MSGD (multiscale structure guided diffusion): where the guidance enters, the per-scale regression
loss against independent values, the ramp, the ablation switches, save/load, the sampler protocol."""

import numpy as np
import pytest
import torch

from deblurdiff.msgd import MSGD, MSGDConfig, build_msgd
from conftest import perturb


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(b, 3, size, size, generator=g)
    blurry = (sharp + torch.roll(sharp, 1, dims=-1) + torch.roll(sharp, 2, dims=-1)) / 3
    return blurry, sharp


def encoder_outputs(model, x_t, y) -> dict[int, torch.Tensor]:
    """The output of every encoder level (its last ResBlock) during one full ``predict_eps``."""
    caught, hooks = {}, []
    for level, blocks in enumerate(model.unet.down):
        hooks.append(blocks[-1].register_forward_hook(lambda mod, inp, out, level=level: caught.__setitem__(level, out)))
    try:
        with torch.no_grad():
            model.predict_eps(x_t, 500, y)
    finally:
        for h in hooks:
            h.remove()
    return caught


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_guidance_features_are_added_to_the_encoder_at_their_resolution(scale):
    """Changing only scale s's guidance network changes the encoder from the level at 1/s on,
    and leaves every shallower (higher-resolution) level exactly as it was."""
    model = build_msgd("msgd-tiny", seed=0).eval()
    perturb(model, seed=1, scale=0.05)
    blurry, _ = images(b=1)
    y, x_t = blurry * 2 - 1, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = encoder_outputs(model, x_t, y)
    with torch.no_grad():
        model.guidance[str(scale)].conv_in.bias.add_(0.5)  # the features f_s change; nothing else does
    after = encoder_outputs(model, x_t, y)
    level = scale.bit_length() - 1
    assert after[level].shape[-1] == 32 // scale
    for lv in before:
        diff = float((after[lv] - before[lv]).abs().max())
        if lv < level:
            assert diff == 0.0, f"level {lv} (1/{2 ** lv}) must not see the 1/{scale} guidance"
        else:
            assert diff > 1e-3, f"level {lv} (1/{2 ** lv}) must respond to the 1/{scale} guidance"


def test_input_level_guidance_enters_at_the_first_layer_and_none_has_no_guidance():
    blurry, sharp = images()
    inp = build_msgd("msgd-tiny", guidance="input")
    assert inp.unet.conv_in.in_channels == 6 + 3  # x_t, y and one grayscale guidance output per scale
    perturb(inp, seed=1, scale=0.05)
    y, x_t = blurry[:1] * 2 - 1, torch.randn(1, 3, 32, 32)
    before = encoder_outputs(inp, x_t, y)
    with torch.no_grad():
        inp.guidance["8"].head.bias.add_(0.5)  # the regressed output at 1/8, concatenated to the input
    assert float((encoder_outputs(inp, x_t, y)[0] - before[0]).abs().max()) > 1e-3
    plain = build_msgd("msgd-tiny", guidance="none")
    assert len(plain.guidance) == 0 and plain.unet.conv_in.in_channels == 6
    assert set(plain.training_losses(blurry, sharp)) == {"loss", "loss_denoise"}


def block_mean(a: np.ndarray, s: int) -> np.ndarray:
    """(B, C, H, W) -> mean over every s×s block, by reshaping (no torch pooling)."""
    b, c, h, w = a.shape
    return a.reshape(b, c, h // s, s, w // s, s).mean(axis=(3, 5))


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_regression_loss_is_the_mean_of_one_mse_per_scale(color):
    """With the regression heads zeroed, ŷ_s = 0, so scale s's loss is the mean square of the
    sharp image (model space, BT.601 luma or RGB) block-averaged by s: computed here with NumPy."""
    model = build_msgd("msgd-tiny", target_color=color, seed=3)
    with torch.no_grad():
        for net in model.guidance.values():
            net.head.weight.zero_()
            net.head.bias.zero_()
    blurry, sharp = images(seed=4)
    with torch.no_grad():
        losses = model.training_losses(blurry, sharp, torch.Generator().manual_seed(0))
    x = sharp.double().numpy() * 2 - 1
    if color == "gray":
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    expected = {s: float(np.mean(block_mean(x, s) ** 2)) for s in (2, 4, 8)}
    assert len(set(round(v, 6) for v in expected.values())) == 3  # the scales are distinguishable
    for s, value in expected.items():
        assert float(losses[f"loss_regression_s{s}"]) == pytest.approx(value, rel=1e-5)
    assert float(losses["loss_regression"]) == pytest.approx(np.mean(list(expected.values())), rel=1e-5)


def test_regression_loss_trains_every_scale_and_the_ablation_without_it_trains_none():
    blurry, sharp = images()
    for weight, expect_grad in ((1.0, True), (0.0, False)):
        model = build_msgd("msgd-tiny", regression_weight=weight)
        perturb(model.unet.conv_out)  # zero-initialised: no gradient would pass the UNet otherwise
        model.training_losses(blurry, sharp, torch.Generator().manual_seed(0), step=10**6)["loss"].backward()
        for s, net in model.guidance.items():
            has = net.head.weight.grad is not None and float(net.head.weight.grad.abs().sum()) > 0
            assert has == expect_grad, (weight, s)
            assert net.conv_in.weight.grad is not None and float(net.conv_in.weight.grad.abs().sum()) > 0, s


def test_denoising_weight_ramps_from_a_regression_only_start():
    model = build_msgd("msgd-tiny", denoise_ramp_steps=100)
    blurry, sharp = images()
    for step, w in ((0, 0.0), (50, 0.5), (100, 1.0), (1000, 1.0)):
        assert model.denoise_weight(step) == w
        with torch.no_grad():
            losses = model.training_losses(blurry, sharp, torch.Generator().manual_seed(0), step=step)
        assert float(losses["loss"]) == pytest.approx(w * float(losses["loss_denoise"]) + float(losses["loss_regression"]))
    # no regression loss (ablation or plain icDPM): nothing to warm up on, denoising is fully on
    assert build_msgd("msgd-tiny", denoise_ramp_steps=100, regression_weight=0).denoise_weight(0) == 1.0
    assert build_msgd("msgd-tiny", denoise_ramp_steps=100, guidance="none").denoise_weight(0) == 1.0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_denoising_target_follows_the_parameterisation(prediction):
    """An untrained UNet predicts exactly 0 (zero-initialised output), so the denoising loss is the
    mean square of the target: the noise (epsilon), x0 (sample), or sqrt(ā)·ε − sqrt(1−ā)·x0 (v)."""
    model = build_msgd("msgd-tiny", prediction_type=prediction, target="residual", residual_scale=2.0)
    blurry, sharp = images()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        loss = float(model.training_losses(blurry, sharp, g)["loss_denoise"])
    g = torch.Generator().manual_seed(7)  # replay the draws: t first, then the noise
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(2, 3, 32, 32, generator=g).double()
    x0 = ((sharp - blurry) * 2 * 2).double()  # (x - y) in model space, times residual_scale
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear schedule
    abar = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1)
    target = {"epsilon": noise, "sample": x0, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[prediction]
    assert loss == pytest.approx(float((target**2).mean()), rel=1e-4)


def test_config_checks_name_the_problem():
    with pytest.raises(ValueError, match="scale 16"):
        build_msgd("msgd-tiny", scales=(2, 16))
    with pytest.raises(ValueError, match="guidance 'late'"):
        build_msgd("msgd-tiny", guidance="late")
    with pytest.raises(TypeError, match="unknown option"):
        build_msgd("msgd-tiny", chanels=(8,))
    with pytest.raises(ValueError, match="multiples of 8"):
        build_msgd("msgd-tiny").training_losses(*images(size=36))
    assert build_msgd("msgd-tiny", guidance="none", channels=(8, 16)).size_multiple == 2


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = build_msgd("msgd-tiny", seed=5), build_msgd("msgd-tiny", seed=5), build_msgd("msgd-tiny", seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_and_load_round_trip(tmp_path):
    model = build_msgd("msgd-tiny", scales=(2, 8), target="residual", seed=2)
    perturb(model)
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "msgd.json"]
    loaded = MSGD.from_pretrained(path)
    assert loaded.config == model.config
    blurry, _ = images()
    x_t = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.predict_eps(x_t, 10, blurry)[0], loaded.predict_eps(x_t, 10, blurry)[0])
    other = build_msgd("msgd-tiny", scales=(2, 4, 8), target="residual", seed=2)
    with pytest.raises(ValueError, match="scales"):
        other.load_trained(path)
    assert isinstance(MSGD.read_config(path), MSGDConfig)


def test_runs_with_the_shared_samplers_and_tiled_denoiser():
    """MSGD speaks the sampler protocol: deblurdiff.sampling and tiling.TiledDenoiser run it unchanged."""
    from deblurdiff.sampling import sample_ddim
    from deblurdiff.tiling import TiledDenoiser

    model = build_msgd("msgd-tiny", seed=0).eval()
    perturb(model, scale=0.05)
    blurry, _ = images(b=1, size=64)
    y = blurry * 2 - 1

    def run(denoiser):
        with torch.no_grad():
            return sample_ddim(denoiser, y, 2, torch.Generator().manual_seed(0))

    out = run(model)
    assert out.shape == (1, 3, 64, 64)
    assert torch.equal(run(TiledDenoiser(model, 64, 16)), out)  # one tile: exactly the untiled path
    tiled = run(TiledDenoiser(model, 48, 32))  # 2×2 blended tiles: a random 4-level UNet, so close, not equal
    assert not torch.equal(tiled, out)
    assert float(torch.corrcoef(torch.stack([out.flatten(), tiled.flatten()]))[0, 1]) > 0.9


def test_training_fits_a_fixed_batch():
    """A sanity check that the losses train the network: 40 Adam steps on one batch halve them."""
    torch.manual_seed(0)
    model = build_msgd("msgd-tiny", target="residual", prediction_type="sample", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    blurry, sharp = images(b=4)
    first = None
    for _ in range(40):
        losses = model.training_losses(blurry, sharp, torch.Generator().manual_seed(0))
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["loss_denoise"].item() < 0.5 * first["loss_denoise"]
    assert losses["loss_regression"].item() < 0.5 * first["loss_regression"]


def test_the_demo_preset_starts_at_the_input_and_one_ddim_step_is_its_x0_prediction():
    """msgd-cpu diffuses the residual over y with a zero-initialised output conv: untrained, its
    1-step sample is the blurry input itself, so training can only move it from there. One DDIM
    step from x_T returns the model's x0 prediction at t = T-1, mapped back to an image by hand."""
    from deblurdiff.msgd_infer import sample_images

    model = build_msgd("msgd-cpu", seed=0).eval()
    blurry, _ = images(b=2, size=32)
    with torch.no_grad():
        assert torch.allclose(sample_images(model, blurry, 1, torch.Generator().manual_seed(0)), blurry, atol=1e-6)
        torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # now it predicts a residual
        out = sample_images(model, blurry, 1, torch.Generator().manual_seed(0), sampler="ddim")
        y = blurry * 2 - 1
        x_t = torch.randn(blurry.shape, generator=torch.Generator().manual_seed(0))
        pred, _ = model.predict_eps(x_t, model.config.num_train_timesteps - 1, y)
        by_hand = ((y + pred / model.config.residual_scale + 1) / 2).clamp(0, 1)
    assert float((by_hand - blurry).abs().mean()) > 1e-3  # the check below is not the identity again
    torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=0)
