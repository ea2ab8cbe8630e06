"""Samplers on the tiny preset: Algorithm 1 exactly, kernels re-estimated every step, seeds, swaps."""

import pytest
import torch

from deblurdiff.presets import build_model
from deblurdiff.sampling import DEFAULT_STEPS, SAMPLERS, make_scheduler, predicted_x0, sample_ddpm
from conftest import perturb


@pytest.fixture(scope="module")
def model():
    m = build_model("tiny", seed=0)
    for part in (m.controlnet, m.lkpn):
        perturb(part)
    return m.eval()


@pytest.fixture(scope="module")
def z_lq():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))


class Recorder:
    """Wraps a model; records every predict_eps call (the kernels are re-estimated inside it)."""

    def __init__(self, model):
        self.model, self.scheduler, self.calls = model, model.scheduler, []

    def predict_eps(self, z_t, t, z_lq):
        self.calls.append((z_t.clone(), int(t)))
        return self.model.predict_eps(z_t, t, z_lq)


def respaced(n_train: int, steps: int) -> list[int]:
    """guided-diffusion's space_timesteps(n_train, str(steps)) (one section), as the released sampler
    uses it: steps indices round(i * (n_train - 1) / (steps - 1)), accumulated, then walked downwards."""
    stride, cur, taken = (n_train - 1) / (steps - 1), 0.0, []
    for _ in range(steps):
        taken.append(round(cur))
        cur += stride
    return sorted(taken, reverse=True)


def test_default_ddpm_is_50_respaced_steps(model):
    assert DEFAULT_STEPS["ddpm"] == 50
    # tiny/SD schedule without an offset: "leading" = 1000 // 50 strides from 0
    leading = make_scheduler("ddpm", model.scheduler, 50).timesteps.tolist()
    assert leading == list(range(980, -1, -20))
    # SD 2.1-base's scheduler config has steps_offset 1: 981, 961, ..., 1
    sd_config = type(model.scheduler).from_config(model.scheduler.config, steps_offset=1)
    assert make_scheduler("ddpm", sd_config, 50).timesteps.tolist() == list(range(981, 0, -20))
    linspace = make_scheduler("ddpm", model.scheduler, 50, timestep_spacing="linspace").timesteps.tolist()
    assert linspace == respaced(1000, 50)
    assert linspace[:5] == [999, 979, 958, 938, 917] and linspace[-3:] == [41, 20, 0]
    with pytest.raises(ValueError, match="spacing 'uniform' unknown"):
        make_scheduler("ddpm", model.scheduler, 50, timestep_spacing="uniform")


@pytest.mark.parametrize("spacing, ts", [("leading", [666, 333, 0]), ("linspace", [999, 500, 0])])
def test_ddpm_is_algorithm_1_written_out(model, z_lq, spacing, ts):
    """sample_ddpm == a hand-written DDPM posterior loop with LKPN -> EAC -> ControlNet -> UNet per step,
    on timesteps written out for both spacings (leading: 1000 // 3 strides; linspace: the released
    respacing round(i * 999 / 2))."""
    steps = 3
    assert respaced(1000, steps) == [999, 500, 0]
    rec = Recorder(model)
    out = sample_ddpm(rec, z_lq, steps, torch.Generator().manual_seed(7), timestep_spacing=spacing)

    abar = model.scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(7)
    z = torch.randn(z_lq.shape, generator=g)  # z_T ~ N(0, I)
    with torch.no_grad():
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_t, a_prev = abar[t], (abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
            beta = 1 - a_t / a_prev
            z_s, _ = model.condition(z_lq, z, t)  # K = LKPN(z_lq, z_t, t); z_s = EAC(z_lq, K) + z_lq
            eps = model.unet(z, t, encoder_hidden_states=model.empty_text_emb,
                             **dict(zip(("down_block_additional_residuals", "mid_block_additional_residual"),
                                        model.controlnet(z, t, model.empty_text_emb,
                                                         controlnet_cond=torch.cat([z_lq, z_s], 1),
                                                         return_dict=False)))).sample
            x0 = (z.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
            mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * z.double()
            if t > 0:
                var = (1 - a_prev) / (1 - a_t) * beta
                mean = mean + var.clamp(min=1e-20).sqrt() * torch.randn(z_lq.shape, generator=g).double()
            z = mean.float()
    assert [t for _, t in rec.calls] == ts  # one prediction (one kernel estimate) per step
    assert torch.allclose(out, z, atol=1e-4), (out - z).abs().max()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_swap_by_name_and_reestimate_kernels_each_step(model, z_lq, name):
    rec, seen = Recorder(model), []
    out = SAMPLERS[name](rec, z_lq, 3, torch.Generator().manual_seed(0), callback=seen.append)
    assert out.shape == z_lq.shape and torch.isfinite(out).all()
    assert len(rec.calls) == 3 and len(seen) == 3
    # z_t differs at every step, so K (and z_s) are re-estimated from a new input each time
    assert not torch.equal(rec.calls[0][0], rec.calls[1][0])
    assert not torch.equal(seen[0]["z_s"], seen[-1]["z_s"])
    assert set(seen[0]) >= {"i", "t", "z_t", "z_s", "x0", "pred"}


def test_same_seed_same_latent_and_per_image_generators(model, z_lq):
    run = lambda seed: SAMPLERS["ddpm"](model, z_lq, 2, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    # a list of generators: an image's result does not depend on its batch mates
    other = torch.randn(z_lq.shape, generator=torch.Generator().manual_seed(9))
    batch = SAMPLERS["ddpm"](model, torch.cat([z_lq, other]), 2,
                             [torch.Generator().manual_seed(3), torch.Generator().manual_seed(11)])
    assert torch.allclose(batch[:1], run(3), atol=1e-5)


def test_samplers_differ_and_x0_inverts_the_forward_process(model, z_lq):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert not torch.allclose(SAMPLERS["ddim"](model, z_lq, 2, g()), SAMPLERS["ddpm"](model, z_lq, 2, g()))
    sched = make_scheduler("ddpm", model.scheduler, 10)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor(500)
    assert torch.allclose(predicted_x0(sched, sched.add_noise(x0, eps, t), eps, t), x0, atol=1e-4)


def test_bad_sampler_settings_are_refused(model):
    with pytest.raises(ValueError, match="unknown"):
        make_scheduler("euler", model.scheduler, 10)
    with pytest.raises(ValueError, match="exceeds"):
        make_scheduler("ddpm", model.scheduler, 5000)
