"""Element-wise Adaptive Convolution (EAC). PLACEHOLDER: being rewritten (memory-efficient path + CUDA)."""

import torch
import torch.nn.functional as F


def eac(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W); kernels: (B, C*k*k, H, W) -> (B, C, H, W). Reference unfold formula."""
    b, c, h, w = x.shape
    kk = kernels.shape[1] // c
    k = int(round(kk ** 0.5))
    cols = F.unfold(x, k, padding=k // 2).view(b, c, kk, h, w)
    return (cols * kernels.view(b, c, kk, h, w)).sum(2)
