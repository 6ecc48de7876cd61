"""Networks: shapes, sizes, latent conditioning, gradient flow, params CLI (tiny preset, CPU)."""

from __future__ import annotations

import pytest
import torch

from ddgan import params
from ddgan.cli import run_cli
from ddgan.config import ModelConfig, load_config, preset_names
from ddgan.nets import Denoiser, Discriminator, Generator, build_networks, count_parameters


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


VARIANTS = {
    "one_level": dict(channel_mult=(1,), disc_channel_mult=(1,)),
    "two_levels": dict(channel_mult=(1, 2), disc_channel_mult=(1, 2)),
    "three_levels_attention": dict(channel_mult=(1, 2, 2), disc_channel_mult=(1, 2, 2), attn_resolutions=(14,)),
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
    for name in preset_names():
        assert name in out
    assert {"tiny", "small", "paper"} <= set(preset_names())


def test_params_cli_unknown_preset_exits_2(capsys):
    assert run_cli(params.main, ["--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


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
