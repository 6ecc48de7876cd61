"""Networks: shapes, sizes, latent conditioning, gradient flow, params CLI (tiny preset, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan import params
from ddgan.cli import run_cli
from ddgan.config import ModelConfig, load_config, preset_names
from ddgan.methods import build_method
from ddgan.nets import Denoiser, Discriminator, Generator, build_networks, count_parameters
from ddgan.nets.discriminator import BlurDownsample, DownBlock, minibatch_stddev, variance_scaling_

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return load_config(None, ["model.preset=tiny"]).model


def _variant(cfg: ModelConfig, **changes) -> ModelConfig:
    return ModelConfig(**{**cfg.model_dump(), **changes})


def _inputs(batch: int, z_dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_prev = torch.randn(batch, 1, 28, 28, generator=gen)
    x_t = torch.randn(batch, 1, 28, 28, generator=gen)
    t = torch.randint(1, 1001, (batch,), generator=gen)  # respaced models see indices up to 1000
    z = torch.randn(batch, z_dim, generator=gen)
    return x_prev, x_t, t, z


def test_build_networks_keys_and_unknown_method(tiny):
    assert set(build_networks(tiny, "ddgan")) == {"generator", "discriminator"}
    assert set(build_networks(tiny, "ddpm")) == {"denoiser"}
    with pytest.raises(ValueError, match="ddgan, ddpm"):
        build_networks(tiny, "vae")


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(tiny, batch):
    x_prev, x_t, t, z = _inputs(batch, tiny.z_dim)
    assert Generator(tiny)(x_t, t, z).shape == (batch, 1, 28, 28)
    assert Denoiser(tiny)(x_t, t).shape == (batch, 1, 28, 28)
    assert Discriminator(tiny)(x_prev, x_t, t).shape == (batch,)


def test_tiny_preset_is_under_100k_parameters(tiny):
    nets = {**build_networks(tiny, "ddgan"), **build_networks(tiny, "ddpm")}
    for name, net in nets.items():
        assert count_parameters(net) < 100_000, name


def test_generator_latent_changes_output_and_is_deterministic(tiny):
    torch.manual_seed(0)
    generator = Generator(tiny).eval()
    _, x_t, t, z = _inputs(2, tiny.z_dim)
    with torch.no_grad():
        a = generator(x_t, t, z)
        b = generator(x_t, t, z)
        c = generator(x_t, t, torch.randn_like(z))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().mean() > 1e-3, "AdaGN: a new z must change x0 for the same x_t"


def test_generator_output_is_inside_open_interval(tiny):
    torch.manual_seed(0)
    _, x_t, t, z = _inputs(8, tiny.z_dim)
    with torch.no_grad():
        x0 = Generator(tiny)(x_t, t, z)
    assert x0.abs().max() < 1.0


def test_discriminator_depends_on_both_images_and_t(tiny):
    torch.manual_seed(0)
    disc = Discriminator(tiny).eval()
    x_prev, x_t, t, _ = _inputs(3, tiny.z_dim)
    with torch.no_grad():
        v = disc(x_prev, x_t, t)
        assert not torch.allclose(v, disc(torch.randn_like(x_prev), x_t, t))
        assert not torch.allclose(v, disc(x_prev, torch.randn_like(x_t), t))
        assert not torch.allclose(v, disc(x_prev, x_t, t % 4 + 1))


def test_minibatch_stddev_closed_form_and_grouping():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    out = minibatch_stddev(h, 4)  # (8, 4, 2, 2); groups by stride: {0, 2, 4, 6}, {1, 3, 5, 7}
    assert out.shape == (8, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], h)
    for first in (0, 1):
        members = h[first::2]  # (4, 3, 2, 2)
        expected = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        for i in range(first, 8, 2):
            torch.testing.assert_close(out[i, 3], torch.full((2, 2), expected.item(), dtype=torch.float64))
    assert minibatch_stddev(h, 0) is h
    with pytest.raises(ValueError, match="multiple of the group size"):
        minibatch_stddev(h[:6], 4)


def _as_after_training(disc: Discriminator) -> Discriminator:
    """The ~zero-initialised layers at scale 1, as they are once D has trained."""
    for module in disc.modules():
        if isinstance(module, DownBlock):
            variance_scaling_(module.conv2)
    variance_scaling_(disc.conv_out)
    return disc


def test_discriminator_initialisation_is_the_official_one(tiny):
    """dense_layer.py: U(+-sqrt(3 scale / fan_out)), zero bias; conv2 of each block and the final
    conv at scale 1e-10, so D starts as its skip path and is nearly constant."""
    torch.manual_seed(0)
    disc = Discriminator(tiny)
    for name, module in disc.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = module.weight
        fan_out = w.shape[0] * w[0][0].numel()
        scale = 1e-10 if name == "conv_out" or name.endswith(".conv2") else 1.0
        bound = (3 * scale / fan_out) ** 0.5
        assert w.abs().max() <= bound * (1 + 1e-6), name
        if w.numel() >= 64:  # uniform: max near the bound, variance scale / fan_out
            assert w.abs().max() > 0.8 * bound, name
            assert abs(w.var().item() / (scale / fan_out) - 1) < 0.35, name
        if module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0, name
    x_prev, x_t, t, _ = _inputs(8, tiny.z_dim)
    with torch.no_grad():
        assert disc(x_prev, x_t, t).abs().max() < 1e-3


def test_discriminator_output_depends_on_its_group_only(tiny):
    """Minibatch stddev (official D, group 4): v_i changes with the other members of i's group."""
    torch.manual_seed(0)
    disc = _as_after_training(Discriminator(tiny)).eval()
    x_prev, x_t, t, _ = _inputs(8, tiny.z_dim)
    with torch.no_grad():
        v = disc(x_prev, x_t, t)
        same_group, other_group = x_prev.clone(), x_prev.clone()
        same_group[2] = torch.randn(1, 28, 28)  # sample 0's group is {0, 2, 4, 6}
        other_group[1] = torch.randn(1, 28, 28)
        assert abs(disc(same_group, x_t, t)[0] - v[0]) > 1e-6
        torch.testing.assert_close(disc(other_group, x_t, t)[0], v[0], rtol=0, atol=0)
        no_std = _as_after_training(Discriminator(_variant(tiny, disc_stddev_group=0))).eval()
        torch.testing.assert_close(no_std(same_group, x_t, t)[0], no_std(x_prev, x_t, t)[0])


def test_base_config_discriminator_sees_the_rest_of_its_batch():
    """configs/ddgan.yaml after one training step (at init its last conv is ~0, as the official
    D): v of one sample moves when another sample of its minibatch-stddev group changes, and
    not when a sample of another group does; R1 is lazy, every 15 steps."""
    cfg = load_config(REPO / "configs" / "ddgan.yaml", ["train.device=cpu"])
    assert (cfg.model.disc_stddev_group, cfg.objective.r1_gamma, cfg.objective.r1_interval) == (4, 0.02, 15)
    torch.manual_seed(0)
    method = build_method(cfg, torch.device("cpu"))
    method.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, step=1)
    disc = method.networks["discriminator"].eval()
    x_prev, x_t, t, _ = _inputs(8, cfg.model.z_dim)
    with torch.no_grad():
        v = disc(x_prev, x_t, t)
        same_group, other_group = x_prev.clone(), x_prev.clone()
        same_group[4] = 4 * same_group[4]  # groups by stride 2: sample 0's group is {0, 2, 4, 6}
        other_group[1] = 4 * other_group[1]
        assert abs(disc(same_group, x_t, t)[0] - v[0]) > 1e-3 * v.abs().mean()
        torch.testing.assert_close(disc(other_group, x_t, t)[0], v[0], rtol=0, atol=0)


def test_blur_downsample_sizes_and_constant_interior():
    down = BlurDownsample()
    sizes = [28]
    x = torch.ones(1, 2, 28, 28)
    while sizes[-1] > 3:
        x = down(x)
        sizes.append(x.shape[-1])
    assert sizes == [28, 14, 7, 3]
    interior = down(torch.full((1, 1, 28, 28), 2.0))[..., 1:-1, 1:-1]  # kernel sums to 1
    torch.testing.assert_close(interior, torch.full_like(interior, 2.0))


def test_latent_mapping_depth_is_one_plus_n_mlp(tiny):
    for n_mlp in (0, 2, 4):
        g = Generator(_variant(tiny, n_mlp=n_mlp))
        assert sum(isinstance(m, torch.nn.Linear) for m in g.mapping.modules()) == 1 + n_mlp


def test_paper_discriminator_has_the_official_small_d_size():
    """Same blocks as the official Discriminator_small: its closed-form count at ngf 64, t_emb 256,
    for a pair of 1-channel images (the official CIFAR-10 D sees 6 channels: 4 x 128 more weights)."""
    paper = load_config(None, ["model.preset=paper"]).model
    ours = count_parameters(Discriminator(paper))
    assert ours == params.official_small_discriminator_parameters(in_channels=2, ngf=64, t_emb_dim=256)
    cifar = params.official_small_discriminator_parameters(in_channels=6, ngf=64, t_emb_dim=256)
    assert cifar - ours == 4 * 128 and 12_000_000 < cifar < 13_000_000


VARIANTS = {
    "one_level": dict(channel_mult=(1,), disc_channel_mult=(1,)),
    "two_levels": dict(channel_mult=(1, 2), disc_channel_mult=(1, 2)),
    "three_levels_attention": dict(channel_mult=(1, 2, 2), disc_channel_mult=(1, 2, 2), attn_resolutions=(14,)),
    "official_disc_levels": dict(channel_mult=(1, 2, 2), disc_channel_mult=(2, 4, 8, 8), disc_stddev_group=0),
    "two_blocks_attention_at_28": dict(channel_mult=(1, 2), num_res_blocks=2, attn_resolutions=(28,), dropout=0.1),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_gradient(tiny, variant):
    cfg = _variant(tiny, **VARIANTS[variant])
    torch.manual_seed(0)
    x_prev, x_t, t, z = _inputs(2, cfg.z_dim)
    generator, disc, denoiser = Generator(cfg), Discriminator(cfg), Denoiser(cfg)
    # The denoiser's output convolution starts at zero (no gradient behind it yet): perturb it.
    torch.nn.init.normal_(denoiser.unet.conv_out.weight, std=0.1)
    weights = torch.randn(2, 1, 28, 28)
    outputs = {
        "generator": (generator(x_t, t, z) * weights).sum(),
        "discriminator": disc(x_prev, x_t, t).sum(),
        "denoiser": (denoiser(x_t, t) * weights).sum(),
    }
    for name, net in [("generator", generator), ("discriminator", disc), ("denoiser", denoiser)]:
        assert outputs[name].shape == ()
        outputs[name].backward()
        for p_name, p in net.named_parameters():
            assert p.grad is not None, f"{name}.{p_name} is unused"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{p_name} gets no gradient"


def test_denoiser_starts_at_zero(tiny):
    _, x_t, t, _ = _inputs(2, tiny.z_dim)
    with torch.no_grad():
        assert torch.count_nonzero(Denoiser(tiny)(x_t, t)) == 0


def test_discriminator_supports_r1_double_backward(tiny):
    x_prev, x_t, t, _ = _inputs(2, tiny.z_dim)
    disc = Discriminator(tiny)
    x_prev.requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x_prev, x_t, t).sum(), x_prev, create_graph=True)
    grad.pow(2).sum().backward()
    assert disc.conv_in.weight.grad is not None and disc.conv_in.weight.grad.abs().sum() > 0


def test_channels_last_gives_the_same_outputs(tiny):
    torch.manual_seed(0)
    cfg = _variant(tiny, attn_resolutions=(14,))
    x_prev, x_t, t, z = _inputs(2, cfg.z_dim)
    generator, disc = Generator(cfg).eval(), Discriminator(cfg).eval()
    with torch.no_grad():
        g_ref, d_ref = generator(x_t, t, z), disc(x_prev, x_t, t)
        generator.to(memory_format=torch.channels_last)
        disc.to(memory_format=torch.channels_last)
        cl = {"memory_format": torch.channels_last}
        torch.testing.assert_close(generator(x_t.to(**cl), t, z), g_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(disc(x_prev.to(**cl), x_t.to(**cl), t), d_ref, atol=1e-5, rtol=1e-4)


def test_params_cli_prints_every_preset(capsys):
    assert params.main([]) == 0
    out = capsys.readouterr().out
    assert {"generator", "discriminator", "denoiser"} <= set(out.split())
    assert "official" in out and "12,741,633" in out  # the official CIFAR-10 D beside ours
    for name in preset_names():
        assert name in out
    assert {"tiny", "small", "paper"} <= set(preset_names())


def test_params_cli_unknown_preset_exits_2(capsys):
    assert run_cli(params.main, ["--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_networks_trace_without_graph_breaks(tiny):
    """torch.compile-friendly: no Python branching on tensor values, no .item()."""
    cfg = _variant(tiny, attn_resolutions=(14,))
    x_prev, x_t, t, z = _inputs(2, cfg.z_dim)
    try:
        for net, args in [(Generator(cfg), (x_t, t, z)), (Discriminator(cfg), (x_prev, x_t, t))]:
            explanation = torch._dynamo.explain(net)(*args)
            assert explanation.graph_break_count == 0, explanation.break_reasons
    finally:
        torch._dynamo.reset()
