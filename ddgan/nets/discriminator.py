"""DDGAN's time-conditional discriminator D(x_{t-1}, x_t, t) (Xiao et al. 2021, eq. 7).

Follows `Discriminator_small` of the official code (score_sde/models/discriminator.py),
adapted to 28x28:

    cat(x_{t-1}, x_t) -> 1x1 conv to C_0
      -> DownBlock(C_0 -> C_0) at 28, then DownBlock(C_{i-1} -> C_i, downsample) per level
      -> minibatch stddev (group 4, one feature) -> 3x3 conv (C + 1 -> C) -> LeakyReLU
      -> sum over positions -> Linear -> v

with C_i = disc_channels * disc_channel_mult[i]. The official CIFAR-10 D is ngf = 64,
multipliers (2, 4, 8, 8) at 32 / 16 / 8 / 4; here the same at 28 / 14 / 7 / 3 (the FIR
downsampling of 7 gives 3, as upfirdn2d does). LeakyReLU(0.2) throughout, no
normalisation, the time embedding added inside every block.

Initialisation as the official `dense_layer.py`: every weight uniform with variance
scale / fan_out, biases zero, scale 1, except the second convolution of each block and the
final 3x3 convolution (scale 1e-10: ~zero). So at init every block is its skip path and D is
nearly a constant; it learns from the first update (Adam is scale-free). PyTorch's default
initialisation (variance 1 / (3 fan_in)) is NOT used: it shrinks the signal by ~sqrt(3) per
layer, v stays ~0.02 and D sits at chance for hundreds of steps (measured: benchmarks/RESULTS.md
section 6).

Minibatch stddev (Karras et al. 2018, as in the official D) makes one sample's output
depend on the others in its group of 4: D can see a lack of variety across fakes.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ddgan.config import ModelConfig
from ddgan.nets.layers import TimeEmbedding
from ddgan.nets.unet import IMAGE_CHANNELS

LeakyReLU = partial(nn.LeakyReLU, 0.2)


class BlurDownsample(nn.Module):
    """FIR low-pass [1, 3, 3, 1] (outer product, sum 1) then stride 2: upfirdn2d's
    `downsample_2d(x, (1, 3, 3, 1), factor=2)`. (B, C, H, W) -> (B, C, H // 2, W // 2)
    (padding 1 on each side: 28 -> 14 -> 7 -> 3).
    """

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 64.0)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


class DownBlock(nn.Module):
    """The official `DownConvBlock`: (B, C_in, H, W), t_emb -> (B, C_out, H', W').

        h = conv1(act(x)) + Linear(t_emb);  h = act(h);  [downsample h and x]
        out = (conv2(h) + skip(x)) / sqrt(2),  skip a bias-free 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.t_proj = nn.Linear(t_emb_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.down = BlurDownsample() if downsample else nn.Identity()
        self.act = LeakyReLU()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(x)) + self.t_proj(t_emb)[:, :, None, None]  # (B, C_out, H, W)
        h = self.down(self.act(h))
        return (self.conv2(h) + self.skip(self.down(x))) * (1 / math.sqrt(2))


def variance_scaling_(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> None:
    """The official `variance_scaling_init_`: weight ~ U(-b, b), b = sqrt(3 scale / fan_out)
    (its `fan_avg` mode falls through to fan_out), scale 0 -> 1e-10; bias zero."""
    fan_out = layer.weight.shape[0] * layer.weight[0][0].numel()
    bound = math.sqrt(3.0 * (1e-10 if scale == 0 else scale) / max(1, fan_out))
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        if layer.bias is not None:
            layer.bias.zero_()


def official_init_(disc: nn.Module) -> None:
    """Every Conv2d / Linear of `disc` at scale 1; each block's conv2 and `conv_out` at ~0."""
    for module in disc.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            variance_scaling_(module)
    for module in disc.modules():
        if isinstance(module, DownBlock):
            variance_scaling_(module.conv2, 0.0)
    variance_scaling_(disc.conv_out, 0.0)


def minibatch_stddev(h: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one feature map: the std over each group of `group_size` samples, averaged over
    channels and positions (Karras et al. 2018; official D: group 4, one feature).

    h: (B, C, H, W) -> (B, C + 1, H, W). Samples are grouped by stride (sample i with
    i + B/G, ...) as the official `view(group, -1, ...)`; the batch size must be a multiple
    of min(B, group_size). group_size 0 returns h unchanged.
    """
    if group_size <= 0:
        return h
    b, c, height, width = h.shape
    group = min(b, group_size)
    if b % group:
        raise ValueError(f"minibatch stddev: batch {b} is not a multiple of the group size {group}")
    std = torch.sqrt(h.reshape(group, -1, c, height, width).float().var(0, unbiased=False) + 1e-8)  # (B/G, C, H, W)
    std = std.mean(dim=(1, 2, 3)).to(h.dtype)  # (B/G,)
    feature = std.repeat(group)[:, None, None, None].expand(b, 1, height, width)  # sample i -> group i % (B/G)
    return torch.cat([h, feature], dim=1)


class Discriminator(nn.Module):
    """forward(x_prev (B, 1, 28, 28), x_t (B, 1, 28, 28), t (B,) int64) -> (B,) raw outputs v.

    Larger v means "more real"; the objective in `ddgan.losses` applies the output
    activation. With minibatch stddev on, v of one sample depends on its group.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        channels = [cfg.disc_channels * m for m in cfg.disc_channel_mult]
        self.stddev_group = cfg.disc_stddev_group
        self.time_embedding = TimeEmbedding(cfg.t_emb_dim, LeakyReLU())
        self.conv_in = nn.Conv2d(2 * IMAGE_CHANNELS, channels[0], 1)
        self.blocks = nn.ModuleList(
            DownBlock(channels[max(i - 1, 0)], ch, cfg.t_emb_dim, downsample=i > 0) for i, ch in enumerate(channels)
        )
        extra = 1 if self.stddev_group > 0 else 0
        self.conv_out = nn.Conv2d(channels[-1] + extra, channels[-1], 3, padding=1)
        self.act = LeakyReLU()
        self.linear_out = nn.Linear(channels[-1], 1)
        official_init_(self)


    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.act(self.time_embedding(t))  # (B, t_emb_dim)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))  # (B, C_0, 28, 28)
        for block in self.blocks:
            h = block(h, t_emb)  # (B, C_i, 28 / 2^i rounded down)
        h = minibatch_stddev(h, self.stddev_group)  # (B, C + 1, 3, 3)
        h = self.act(self.conv_out(h)).sum(dim=(2, 3))  # (B, C); DDGAN sums, a mean shrinks v 9x
        return self.linear_out(h).squeeze(1)  # (B,)
