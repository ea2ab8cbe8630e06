"""LKPN: zero-init residual, shapes, kernel layout vs EAC, ablation modes, save/load."""

import pytest
import torch
import torch.nn.functional as F

from deblurdiff.lkpn import LKPN
from deblurdiff.ops import eac
from conftest import perturb

TINY = dict(
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=16, norm_num_groups=8
)


def tiny_lkpn(seed=0, **kw) -> LKPN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LKPN(**{**TINY, **kw})


def inputs(b=2, c=4, h=16, w=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_lq = torch.randn(b, c, h, w, generator=g)
    z_t = torch.randn(b, c, h, w, generator=g)
    t = torch.tensor([7, 900])[:b]
    text = torch.randn(1, 77, d, generator=g)
    return z_lq, z_t, t, text


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_zero_init_gives_identity_and_shapes(kernel_size):
    lkpn = tiny_lkpn(kernel_size=kernel_size)
    z_lq, z_t, t, text = inputs()
    out = lkpn(z_lq, z_t, t, text)
    assert out.kernels.shape == (2, 4 * kernel_size**2, 16, 16)
    assert out.z_s.shape == z_lq.shape
    assert torch.equal(out.kernels, torch.zeros_like(out.kernels))
    assert torch.equal(out.z_s, z_lq)


def test_gradients_reach_zero_init_conv_and_beyond_after_a_step():
    lkpn = tiny_lkpn()
    z_lq, z_t, t, text = inputs()
    target = torch.roll(z_lq, 1, dims=-1)
    loss = F.mse_loss(lkpn(z_lq, z_t, t, text).z_s, target)
    loss.backward()
    assert lkpn.unet.conv_out.weight.grad.abs().sum() > 0
    assert lkpn.unet.conv_out.bias.grad.abs().sum() > 0
    opt = torch.optim.SGD(lkpn.parameters(), lr=1.0)
    opt.step()
    opt.zero_grad()
    F.mse_loss(lkpn(z_lq, z_t, t, text).z_s, target).backward()
    assert lkpn.unet.conv_in.weight.grad.abs().sum() > 0  # the whole UNet trains once conv_out is non-zero


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_kernel_channel_layout_matches_eac(kernel_size):
    """Channel c*k*k + kh*k + kw of the output is tap (kh, kw) of channel c's kernel."""
    k, p = kernel_size, kernel_size // 2
    lkpn = tiny_lkpn(kernel_size=k)
    taps = [(0, 0), (p, p + 1), (k - 1, 0), (1, k - 1)]  # a different one-hot tap per latent channel
    with torch.no_grad():
        bias = torch.zeros(4 * k * k)
        for c, (kh, kw) in enumerate(taps):
            bias[c * k * k + kh * k + kw] = 1.0
        lkpn.unet.conv_out.bias.copy_(bias)
    z_lq, z_t, t, text = inputs()
    out = lkpn(z_lq, z_t, t, text)
    padded = F.pad(z_lq, (p, p, p, p))
    h, w = z_lq.shape[-2:]
    expected = torch.stack(
        [padded[:, c, kh : kh + h, kw : kw + w] for c, (kh, kw) in enumerate(taps)], dim=1
    ) + z_lq
    torch.testing.assert_close(out.z_s, expected)
    torch.testing.assert_close(out.z_s, eac(z_lq, out.kernels) + z_lq)


def test_static_ignores_z_t_and_t():
    lkpn = tiny_lkpn(static=True)
    assert lkpn.unet.config.in_channels == 4
    perturb(lkpn)
    z_lq, z_t, t, text = inputs()
    a = lkpn(z_lq, z_t, t, text)
    b = lkpn(z_lq, None, None, text)
    assert a.kernels.shape == (2, 100, 16, 16)
    torch.testing.assert_close(a.z_s, b.z_s, rtol=0, atol=0)


def test_dynamic_depends_on_z_t_and_requires_it():
    lkpn = tiny_lkpn()
    perturb(lkpn)
    z_lq, z_t, t, text = inputs()
    a = lkpn(z_lq, z_t, t, text).z_s
    b = lkpn(z_lq, z_t, t.flip(0), text).z_s
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="z_t and t are required"):
        lkpn(z_lq, None, t, text)


def test_direct_predicts_a_residual_latent():
    lkpn = tiny_lkpn(direct=True)
    assert lkpn.unet.config.out_channels == 4
    z_lq, z_t, t, text = inputs()
    out = lkpn(z_lq, z_t, t, text)
    assert out.kernels is None
    assert torch.equal(out.z_s, z_lq)
    perturb(lkpn)
    assert not torch.equal(lkpn(z_lq, z_t, t, text).z_s, z_lq)


def test_save_load_round_trip(tmp_path):
    lkpn = tiny_lkpn(kernel_size=3, static=True)
    perturb(lkpn)
    lkpn.save_pretrained(tmp_path / "lkpn")
    loaded = LKPN.from_pretrained(tmp_path / "lkpn", local_files_only=True)
    assert loaded.config.kernel_size == 3 and loaded.config.static and not loaded.config.direct
    z_lq, z_t, t, text = inputs()
    assert torch.equal(lkpn(z_lq, z_t, t, text).z_s, loaded(z_lq, z_t, t, text).z_s)


def test_gradient_checkpointing_gives_same_gradients():
    z_lq, z_t, t, text = inputs()
    grads = []
    for checkpointing in (False, True):
        lkpn = tiny_lkpn()
        perturb(lkpn)
        if checkpointing:
            lkpn.enable_gradient_checkpointing()
        lkpn.train()
        lkpn(z_lq, z_t, t, text).z_s.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lkpn.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_paper_size_is_about_145m_parameters():
    with torch.device("meta"):
        lkpn = LKPN(cross_attention_dim=1024)
    n = sum(p.numel() for p in lkpn.parameters())
    assert 140e6 < n < 150e6, n
    assert lkpn.unet.conv_out.out_channels == 100


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        LKPN(**{**TINY, "kernel_size": 4})
    with pytest.raises(ValueError, match="multiples of attention_head_dim"):
        LKPN(**{**TINY, "attention_head_dim": 24})


def test_input_order_is_blurry_latent_first():
    """The UNet reads cat(z_lq, z_t), as the released LKPN (merge = cat([c_img, x_noisy])): with the
    weights of conv_in's last four input channels at zero, the output ignores z_t and follows z_lq."""
    lkpn = tiny_lkpn()
    perturb(lkpn)
    with torch.no_grad():
        lkpn.unet.conv_in.weight[:, 4:] = 0
    z_lq, z_t, t, text = inputs()
    base = lkpn(z_lq, z_t, t, text).kernels
    assert torch.equal(lkpn(z_lq, torch.randn_like(z_t), t, text).kernels, base)
    assert not torch.allclose(lkpn(torch.randn_like(z_lq), z_t, t, text).kernels, base)


def test_residual_branch_zero_init_is_the_identity_on_skip_paths():
    lkpn = tiny_lkpn(zero_init="residual-branches")
    for name, module in lkpn.unet.named_modules():
        if name.endswith(("conv2", "proj_out", "conv_out")):
            assert not module.weight.any() and not module.bias.any(), name
    z_lq, z_t, t, text = inputs()
    assert torch.equal(lkpn(z_lq, z_t, t, text).z_s, z_lq)
    with pytest.raises(ValueError, match="zero_init 'all' unknown"):
        tiny_lkpn(zero_init="all")
