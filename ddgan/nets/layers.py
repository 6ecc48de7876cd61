"""Building blocks shared by the U-Net (generator, denoiser) and the discriminator.

Everything here works at the native Fashion-MNIST resolutions 28, 14 and 7: a
stride-2 3x3 convolution halves 28 -> 14 -> 7 exactly and nearest upsampling
doubles back, so no padding to 32 and cropping is needed.

The blocks are torch.compile- and channels_last-friendly: no Python branching on
tensor values, no `.item()`, `reshape` instead of `view`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def num_groups(channels: int) -> int:
    """GroupNorm groups: about 4 channels a group, at most 32, dividing `channels`."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of the step index (Vaswani et al. 2017; Ho et al. 2020).

    t: (B,) integer or float step indices (any value up to T = 1000, so respaced
    schedules work). Returns (B, dim): [cos(t w_i), sin(t w_i)] with
    w_i = max_period^(-i / half), zero-padded when `dim` is odd.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoid of t followed by a two-layer MLP: (B,) -> (B, dim)."""

    def __init__(self, dim: int, act: nn.Module):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), act, nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + eps) over the feature axis (StyleGAN's latent normalisation)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(torch.mean(z * z, dim=1, keepdim=True) + 1e-8)


class LatentMapping(nn.Module):
    """DDGAN's z mapping (ncsnpp_generator_adagn.py, `z_transform`): PixelNorm, Linear(z_dim,
    z_emb_dim) + SiLU, then `n_mlp` x (Linear(z_emb_dim, z_emb_dim) + SiLU).
    (B, z_dim) -> (B, z_emb_dim). The official CIFAR-10 run uses n_mlp = 4."""

    def __init__(self, z_dim: int, z_emb_dim: int, n_mlp: int = 4):
        super().__init__()
        mods: list[nn.Module] = [PixelNorm()]
        for i in range(n_mlp + 1):
            mods += [nn.Linear(z_dim if i == 0 else z_emb_dim, z_emb_dim), nn.SiLU()]
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class AdaptiveGroupNorm(nn.Module):
    """AdaGN (Xiao et al. 2021, after StyleGAN): GroupNorm without affine, then
    (1 + gamma(z)) * h + beta(z), with [gamma, beta] = Linear(z_emb).

    h: (B, C, H, W), z_emb: (B, z_emb_dim) -> (B, C, H, W). gamma and beta start
    near zero (bias zero), so the block starts close to a plain GroupNorm.
    """

    def __init__(self, channels: int, z_emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups(channels), channels, affine=False)
        self.style = nn.Linear(z_emb_dim, 2 * channels)
        nn.init.zeros_(self.style.bias)

    def forward(self, h: torch.Tensor, z_emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(z_emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return (1 + gamma) * self.norm(h) + beta


class _Norm(nn.Module):
    """GroupNorm, or AdaGN when `z_emb_dim` is given."""

    def __init__(self, channels: int, z_emb_dim: int | None):
        super().__init__()
        self.adaptive = z_emb_dim is not None
        if self.adaptive:
            self.norm: nn.Module = AdaptiveGroupNorm(channels, z_emb_dim)
        else:
            self.norm = nn.GroupNorm(num_groups(channels), channels)

    def forward(self, h: torch.Tensor, z_emb: torch.Tensor | None) -> torch.Tensor:
        return self.norm(h, z_emb) if self.adaptive else self.norm(h)


class ResBlock(nn.Module):
    """Residual block with the time embedding added between the two convolutions.

        h = conv1(act(norm1(x))) + Linear(act(t_emb))
        h = conv2(dropout(act(norm2(h))))
        out = (skip(x) + h) / sqrt(2)

    x: (B, C_in, H, W), t_emb: (B, t_emb_dim), z_emb: (B, z_emb_dim) or None ->
    (B, C_out, H, W). With `z_emb_dim` both norms are AdaGN (DDGAN's generator). The 1/sqrt(2) skip
    rescale follows NCSN++ (Song et al. 2021), used by DDGAN.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        t_emb_dim: int,
        *,
        z_emb_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = _Norm(in_ch, z_emb_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.t_proj = nn.Linear(t_emb_dim, out_ch)
        self.norm2 = _Norm(out_ch, z_emb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x, z_emb)))  # (B, C_out, H, W)
        h = h + self.t_proj(self.act(t_emb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h, z_emb))))
        return (self.skip(x) + h) * (1 / math.sqrt(2))


class SelfAttention(nn.Module):
    """Single-head self-attention over the H * W positions, residual.

    x: (B, C, H, W) -> (B, C, H, W); softmax(q k^T / sqrt(C)) v via
    `scaled_dot_product_attention`, so it compiles and picks a fused kernel.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, height * width)  # (B, 3, C, HW)
        q, k, v = qkv.transpose(2, 3).unsqueeze(2).unbind(1)  # (B, 1, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        h = h.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return (x + self.proj(h)) * (1 / math.sqrt(2))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: 28 -> 14 -> 7 (exact halving of even sizes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: 7 -> 14 -> 28."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
