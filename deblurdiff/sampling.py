"""Samplers for DeblurDiff: Algorithm 1 of the paper (DDPM) and fast variants (DDIM, DPM-Solver++).

Every sampler has one signature, so they swap by name (``SAMPLERS``)::

    z0 = sample_ddpm(model, z_lq, steps, generator, callback=None, progress=False, timestep_spacing=None)

- ``model`` is anything with ``predict_eps(z_t, t, z_lq) -> (pred, z_s)`` and a ``scheduler``
  (a :class:`deblurdiff.model.DeblurDiff`, or a :class:`deblurdiff.tiling.TiledDenoiser` around
  one). ``pred`` is what ``scheduler.config.prediction_type`` says (epsilon / v / sample).
- ``z_lq`` (B, 4, h, w): the blurry latent (float32, as ``DeblurDiff.encode`` returns it), on the model's device.
- ``steps``: number of (respaced) denoising steps.
- ``timestep_spacing``: which ``steps`` of the 1000 training timesteps are visited (diffusers'
  names): ``"leading"`` (SD's scheduler config, with its ``steps_offset``: 981, 961, ..., 1 for
  50 steps), ``"linspace"`` (``round(linspace(0, 999, steps))``: 999, 979, 958, ..., 20, 0 — the
  respacing of the released code, guided-diffusion's ``space_timesteps``), ``"trailing"``;
  None = the model's training scheduler's own setting.
- ``generator``: a CPU ``torch.Generator`` or a list of B of them (one per image, so an image's
  noise does not depend on what it is batched with). All noise (z_T and the DDPM posterior noise)
  is drawn on the CPU and moved to the device, so a seed gives the same noise on CPU and CUDA.
- ``callback(info)`` is called after every step with a dict: ``i`` (step index), ``t``
  (timestep), ``z_t`` (the latent the step started from), ``z_s`` (LKPN's deblurred latent
  estimate), ``x0`` (the clean latent predicted from ``pred`` at this step), ``pred``.

At every step (Algorithm 1) the kernels are re-estimated from the current ``z_t``::

    K   = LKPN(z_lq, z_t, t);  z_s = EAC(z_lq, K) + z_lq
    eps = UNet(z_t, t, ControlNet(z_t, t, cat(z_lq, z_s)))        # model.predict_eps
    z_{t-1} = scheduler.step(eps, t, z_t)                           # DDPM posterior / DDIM / DPM++

The schedulers are diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` /
``DPMSolverMultistepScheduler`` built ``from_config`` of the model's (training) scheduler, so the
betas and prediction type are the checkpoint's. With respaced timesteps the DDPM step uses the
respaced betas ``1 - abar_t / abar_prev`` and the posterior variance ``(1 - abar_prev) / (1 -
abar_t) * beta``, as guided-diffusion's respacing does. (diffusers' DDIM steps to ``t - 1000 //
steps`` whatever the spacing, so with ``"linspace"`` its previous timestep can be off by one from
the next one visited.) The sampler state (``z_t``) is kept in float32 whatever the model's dtype;
only the network inputs are cast.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

Generators = torch.Generator | Sequence[torch.Generator]

SCHEDULERS = {
    "ddpm": DDPMScheduler,  # Algorithm 1 of the paper: DDPM posterior, respaced
    "ddim": DDIMScheduler,  # eta = 0 (deterministic after z_T)
    "dpmsolver": DPMSolverMultistepScheduler,  # DPM-Solver++(2M)
}
DEFAULT_STEPS = {"ddpm": 50, "ddim": 20, "dpmsolver": 20}
SPACINGS = ("leading", "linspace", "trailing")


def make_scheduler(name: str, train_scheduler, steps: int, device: torch.device | str | None = None,
                   timestep_spacing: str | None = None):
    """A fresh inference scheduler ``name`` from the model's training scheduler's config, with
    ``steps`` timesteps set, spaced as ``timestep_spacing`` says (None: the config's)."""
    if name not in SCHEDULERS:
        raise ValueError(f"sampler {name!r} unknown — choose one of {', '.join(SCHEDULERS)}")
    if timestep_spacing not in (None, *SPACINGS):
        raise ValueError(f"timestep spacing {timestep_spacing!r} unknown — choose one of {', '.join(SPACINGS)}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    n_train = train_scheduler.config.num_train_timesteps
    if steps > n_train:
        raise ValueError(f"--steps {steps} exceeds the model's {n_train} training timesteps")
    overrides = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    scheduler = SCHEDULERS[name].from_config(train_scheduler.config, **overrides)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def initial_noise(shape: tuple[int, ...], generator: Generators, device, scheduler) -> torch.Tensor:
    """z_T ~ N(0, I) * init_noise_sigma, float32, drawn on the CPU (per image if a list)."""
    if isinstance(generator, torch.Generator):
        z = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        z = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator])
    return z.to(device) * scheduler.init_noise_sigma


def predicted_x0(scheduler, z_t: torch.Tensor, pred: torch.Tensor, t) -> torch.Tensor:
    """The clean latent implied by the network's prediction at timestep ``t`` (float32)."""
    abar = scheduler.alphas_cumprod.to(z_t.device, torch.float32)[int(t)]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (z_t - (1 - abar).sqrt() * pred) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * z_t - (1 - abar).sqrt() * pred
    if kind == "sample":
        return pred
    raise ValueError(f"scheduler prediction_type {kind!r} not supported")


@torch.no_grad()
def run_scheduler(model, z_lq: torch.Tensor, scheduler, generator: Generators, callback: Callable | None = None,
                  progress: bool = False) -> torch.Tensor:
    """The shared loop: from z_T ~ N(0, I) to z_0 with an already configured ``scheduler``.

    Returns the final latent (B, 4, h, w), float32.
    """
    from tqdm import tqdm

    z_t = initial_noise(tuple(z_lq.shape), generator, z_lq.device, scheduler)
    gen = generator if isinstance(generator, torch.Generator) else list(generator)
    timesteps = scheduler.timesteps
    for i, t in enumerate(tqdm(timesteps, desc="steps", unit="step", leave=False, disable=not progress)):
        z_in = scheduler.scale_model_input(z_t, t)
        pred, z_s = model.predict_eps(z_in, t, z_lq)  # float32 z_t; each network casts its own input
        pred = pred.float()
        z_next = scheduler.step(pred, t, z_t, generator=gen, return_dict=False)[0]
        if callback is not None:
            callback({"i": i, "t": int(t), "z_t": z_t, "z_s": z_s.float(), "x0": predicted_x0(scheduler, z_t, pred, t),
                      "pred": pred})
        z_t = z_next
    return z_t


def sample_ddpm(model, z_lq, steps: int, generator: Generators, callback=None, progress: bool = False,
                timestep_spacing: str | None = None):
    """Algorithm 1: DDPM posterior updates on ``steps`` respaced timesteps (paper default 50)."""
    sched = make_scheduler("ddpm", model.scheduler, steps, z_lq.device, timestep_spacing)
    return run_scheduler(model, z_lq, sched, generator, callback, progress)


def sample_ddim(model, z_lq, steps: int, generator: Generators, callback=None, progress: bool = False,
                timestep_spacing: str | None = None):
    """DDIM (eta = 0) with the same per-step kernel re-estimation; 10–20 steps."""
    sched = make_scheduler("ddim", model.scheduler, steps, z_lq.device, timestep_spacing)
    return run_scheduler(model, z_lq, sched, generator, callback, progress)


def sample_dpmsolver(model, z_lq, steps: int, generator: Generators, callback=None, progress: bool = False,
                     timestep_spacing: str | None = None):
    """DPM-Solver++(2M) with the same per-step kernel re-estimation; 10–20 steps."""
    sched = make_scheduler("dpmsolver", model.scheduler, steps, z_lq.device, timestep_spacing)
    return run_scheduler(model, z_lq, sched, generator, callback, progress)


SAMPLERS: dict[str, Callable] = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmsolver": sample_dpmsolver}
