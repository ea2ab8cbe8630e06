"""Windowed attention layers, as the released DeblurDiff code runs them.

In the released code (``model/attention.py``, ``SpatialTransformer``) every transformer layer cuts
its input into overlapping windows of at most ``k × k`` latent pixels, runs GroupNorm, the
projections and the attention on each window separately, and averages the overlapping outputs::

    out = x + mean over the windows covering each pixel of f(window)

Windows (``grids``): along a side of length n, ``m = (n - 1) // k + 1`` windows of size
``min(n, k)``, starting every ``ceil((n - k) / (m - 1))`` pixels, the last one moved back to end
at the border. ``k`` is 64 latent pixels at the UNets' full resolution and halves with each
down level (SD UNet and LKPN: 64, 32, 16, 8 — the same 64-pixel region of the top level), while
the ControlNet uses 64 at every level. Up to a 64×64 latent (512×512 pixels) every layer sees
one window, i.e. plain global attention; beyond, the windows change the result.

:func:`set_attention_windows` reproduces this on diffusers' ``Transformer2DModel`` layers by
replacing each layer's ``forward`` on the instance (state_dict and weights are untouched):
running the whole layer (with its residual) on the stacked windows and averaging equals the
released ``x + average(f(window))``. The released code asserts a batch of one; here each image of
a batch is windowed the same way.
"""

from __future__ import annotations

import math

import torch

RELEASED_WINDOW = 64  # kernel_size=(64, 64) of the released SpatialTransformer (k = 64 at the top level)


def window_starts(n: int, k: int) -> list[int]:
    """Start offsets of the windows along a side of ``n`` pixels with window ``k`` (``min(n, k)`` wide)."""
    k = min(n, k)
    count = (n - 1) // k + 1
    step = k if count == 1 else math.ceil((n - k) / (count - 1) - 1e-8)
    starts, i = [], 0
    while i < n:
        if i + k >= n:
            starts.append(n - k)
            break
        starts.append(i)
        i += step
    return starts


def windowed(forward, window: int):
    """``forward`` of a ``Transformer2DModel`` run on ``window``-sized tiles of its input, averaged."""

    def run(hidden_states, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        b, c, h, w = hidden_states.shape
        rows, cols = window_starts(h, window), window_starts(w, window)
        if len(rows) == 1 and len(cols) == 1:
            return forward(hidden_states, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        kh, kw = min(h, window), min(w, window)
        spots = [(i, j) for i in rows for j in cols]
        parts = torch.cat([hidden_states[:, :, i:i + kh, j:j + kw] for i, j in spots])  # window-major
        context = None if encoder_hidden_states is None else encoder_hidden_states.repeat(len(spots), 1, 1)
        out = forward(parts, context, *args, return_dict=False, **kwargs)[0]
        acc = torch.zeros_like(hidden_states)
        count = torch.zeros((1, 1, h, w), dtype=hidden_states.dtype, device=hidden_states.device)
        for n, (i, j) in enumerate(spots):
            acc[:, :, i:i + kh, j:j + kw] += out[n * b:(n + 1) * b]
            count[:, :, i:i + kh, j:j + kw] += 1
        out = acc / count
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    run.window = window
    return run


def set_attention_windows(net, window: int | None, per_level: bool) -> None:
    """Window every transformer layer of a diffusers UNet-like ``net`` (``UNet2DConditionModel``,
    ``ControlNetModel``): ``window`` latent pixels at the top level, halved per down level if
    ``per_level`` (SD UNet, LKPN) or the same at every level (ControlNet). None removes windows."""
    levels = len(net.down_blocks)

    def apply(blocks, level: int) -> None:
        for layer in getattr(blocks, "attentions", None) or []:
            layer.__dict__.pop("forward", None)  # back to the class's forward
            if window is not None:
                size = window >> level if per_level else window
                layer.forward = windowed(layer.forward, max(1, size))

    for level, block in enumerate(net.down_blocks):
        apply(block, level)
    apply(net.mid_block, levels - 1)
    for j, block in enumerate(getattr(net, "up_blocks", [])):
        apply(block, levels - 1 - j)
