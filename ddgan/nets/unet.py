"""Time-conditional U-Net at native 28 / 14 / 7 resolution: DDPM denoiser and DDGAN generator.

Layout (improved-diffusion / NCSN++ style). Level i of `channel_mult` works at
resolution 28 / 2^i with `base_channels * channel_mult[i]` channels:

    conv_in -> [num_res_blocks x (ResBlock, attention?)  + Downsample]  per level
            -> middle: ResBlock, (attention), ResBlock                  at the lowest level
            -> [(num_res_blocks + 1) x (concat skip, ResBlock, attention?) + Upsample] per level
            -> GroupNorm, SiLU, conv_out

Attention runs at the resolutions listed in `attn_resolutions`; the middle has
attention whenever any is configured (as in DDPM, which always attends at the
bottom). 28 = 4 x 7 is handled natively: stride-2 convolutions go 28 -> 14 -> 7
and nearest upsampling returns, so no padding to 32.
"""

from __future__ import annotations

import torch
from torch import nn

from ddgan.config import ModelConfig
from ddgan.nets.layers import (
    Downsample,
    LatentMapping,
    ResBlock,
    SelfAttention,
    TimeEmbedding,
    Upsample,
    num_groups,
)

IMAGE_SIZE = 28
IMAGE_CHANNELS = 1


def level_resolutions(levels: int) -> list[int]:
    """[28, 14, 7][:levels]: the resolution of each U-Net level."""
    return [IMAGE_SIZE // 2**i for i in range(levels)]


class _Stage(nn.Module):
    """ResBlock then optional self-attention; passes t_emb and z_emb through."""

    def __init__(self, block: ResBlock, attention: bool, channels: int):
        super().__init__()
        self.block = block
        self.attn = SelfAttention(channels) if attention else nn.Identity()

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor, z_emb: torch.Tensor | None) -> torch.Tensor:
        return self.attn(self.block(h, t_emb, z_emb))


class UNet(nn.Module):
    """The shared backbone. x: (B, in_channels, 28, 28), t: (B,) -> (B, out_channels, 28, 28).

    With `z_emb_dim`, every ResBlock normalises with AdaGN driven by `z_emb`
    (B, z_emb_dim); otherwise `z_emb` must be None.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int, z_emb_dim: int | None = None):
        super().__init__()
        base, mults = cfg.base_channels, cfg.channel_mult
        resolutions = level_resolutions(len(mults))

        def res_block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, cfg.t_emb_dim, z_emb_dim=z_emb_dim, dropout=cfg.dropout)

        self.time_embedding = TimeEmbedding(cfg.t_emb_dim, nn.SiLU())
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [base]
        ch = base
        for level, (mult, res) in enumerate(zip(mults, resolutions, strict=True)):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Stage(res_block(ch, base * mult), res in cfg.attn_resolutions, base * mult))
                ch = base * mult
                skip_channels.append(ch)
            if level < len(mults) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([
            _Stage(res_block(ch, ch), bool(cfg.attn_resolutions), ch),
            _Stage(res_block(ch, ch), False, ch),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(len(mults))):
            out = base * mults[level]
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(_Stage(res_block(ch + skip_channels.pop(), out), resolutions[level] in cfg.attn_resolutions, out))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = nn.GroupNorm(num_groups(ch), ch)
        self.act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z_emb: torch.Tensor | None = None) -> torch.Tensor:
        t_emb = self.time_embedding(t)  # (B, t_emb_dim)
        h = self.conv_in(x)  # (B, base, 28, 28)
        skips = [h]
        for layer in self.down:
            h = layer(h, t_emb, z_emb) if isinstance(layer, _Stage) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, t_emb, z_emb)
        for layer in self.up:
            if isinstance(layer, _Stage):
                h = layer(torch.cat([h, skips.pop()], dim=1), t_emb, z_emb)
            else:
                h = layer(h)
        return self.conv_out(self.act_out(self.norm_out(h)))  # (B, out_channels, 28, 28)


class Denoiser(nn.Module):
    """DDPM epsilon-prediction network (Ho et al. 2020): eps_theta(x_t, t).

    forward(x_t (B, 1, 28, 28), t (B,) int64) -> eps (B, 1, 28, 28). The output
    convolution starts at zero (Nichol & Dhariwal 2021), so training starts from
    eps = 0, the mean of the target.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.unet = UNet(cfg, IMAGE_CHANNELS, IMAGE_CHANNELS)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)


class Generator(nn.Module):
    """DDGAN generator G(x_t, z, t) -> x0 prediction (Xiao et al. 2021, eq. 9).

    forward(x_t (B, 1, 28, 28), t (B,) int64, z (B, z_dim)) -> x0 (B, 1, 28, 28)
    in (-1, 1) via tanh, as in DDGAN's NCSN++ generator. z is PixelNorm-ed and
    mapped by a (1 + n_mlp)-layer MLP to z_emb (B, z_emb_dim), which drives AdaGN in every
    residual block, so one x_t maps to many x0 (a multimodal p(x0 | x_t)).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.mapping = LatentMapping(cfg.z_dim, cfg.z_emb_dim, cfg.n_mlp)
        self.unet = UNet(cfg, IMAGE_CHANNELS, IMAGE_CHANNELS, z_emb_dim=cfg.z_emb_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z_emb = self.mapping(z)  # (B, z_emb_dim)
        return torch.tanh(self.unet(x_t, t, z_emb))
