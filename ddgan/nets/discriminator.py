"""DDGAN's time-conditional discriminator D(x_{t-1}, x_t, t) (Xiao et al. 2021, eq. 7).

The U-Net's encoder half on the two images stacked as channels: level i of
`disc_channel_mult` works at resolution 28 / 2^i with
`disc_channels * disc_channel_mult[i]` channels, one ResBlock a level (as in
DDGAN's small discriminator), the time embedding added in every block, stride-2
downsampling between levels, then LeakyReLU, a sum over positions (as in
DDGAN; a mean shrinks the output's response to its input 49x at 7x7, and in our
CPU runs left D at chance while G drifted) and one linear output. Like DDGAN's discriminator it uses LeakyReLU(0.2) throughout and
no normalisation (R1 and batch-independent outputs stay well defined); unlike
it, there is no minibatch-stddev feature.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ddgan.config import ModelConfig
from ddgan.nets.layers import Downsample, ResBlock, TimeEmbedding
from ddgan.nets.unet import IMAGE_CHANNELS

LeakyReLU = partial(nn.LeakyReLU, 0.2)


class Discriminator(nn.Module):
    """forward(x_prev (B, 1, 28, 28), x_t (B, 1, 28, 28), t (B,) int64) -> (B,) raw outputs v.

    Larger v means "more real"; the objective in `ddgan.losses` applies the
    output activation.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        base, mults = cfg.disc_channels, cfg.disc_channel_mult
        self.time_embedding = TimeEmbedding(cfg.t_emb_dim, LeakyReLU())
        self.conv_in = nn.Conv2d(2 * IMAGE_CHANNELS, base, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        ch = base
        for level, mult in enumerate(mults):
            self.blocks.append(ResBlock(ch, base * mult, cfg.t_emb_dim, act=LeakyReLU, norm=False))
            ch = base * mult
            self.downs.append(Downsample(ch) if level < len(mults) - 1 else nn.Identity())
        self.act = LeakyReLU()
        self.linear_out = nn.Linear(ch, 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_embedding(t)  # (B, t_emb_dim)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))  # (B, C, 28, 28)
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = down(block(h, t_emb))
        h = self.act(h).sum(dim=(2, 3))  # (B, C_last)
        return self.linear_out(h).squeeze(1)  # (B,)
