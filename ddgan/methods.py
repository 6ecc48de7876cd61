"""One optimisation step of each method, with the state it owns.

A method holds its networks, optimisers, LR schedulers and EMA, and knows how
to take one step on a batch of data and how to sample with its EMA weights.
Losses come from `ddgan.losses`, the Gaussian math from `ddgan.schedule`; the
loop (cadence, checkpoints, callbacks) belongs to `ddgan.trainer`.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ddgan.config import Config
from ddgan.ema import EMA, _unwrap
from ddgan.losses import get_objective, gradient_penalty, r1_penalty
from ddgan.nets import build_networks, memory_format_for
from ddgan.sampler import sample_ddgan, sample_ddpm
from ddgan.schedule import Schedule, build_schedule


def schedule_for(cfg: Config) -> Schedule:
    d = cfg.diffusion
    return build_schedule(d.schedule, d.T, beta_min=d.beta_min, beta_max=d.beta_max)


def _adam(params, lr: float, cfg: Config) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA): one kernel over all parameters, where the
    default on CPU loops over them in Python (3.5 ms -> 1.1 ms per step for the small G)."""
    return torch.optim.Adam(params, lr=lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=True)


def _lr_scheduler(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    steps = cfg.train.steps
    if cfg.train.cosine_decay:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


class Method:
    """Shared plumbing: device placement, autocast, state dicts, weight checks."""

    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    lr_schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    ema: dict[str, EMA]

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.schedule = schedule_for(cfg)
        self.cuda = device.type == "cuda"
        self.memory_format = memory_format_for(cfg.train.channels_last, device)
        self.networks = {
            name: net.to(device, memory_format=self.memory_format) for name, net in build_networks(cfg.model, cfg.method).items()
        }
        self.rng = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)

    def _compile(self, skip: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        """`torch.compile` every network but those in `skip` (when `train.compile` is on)."""
        if self.cfg.train.compile:
            return {name: net if name in skip else torch.compile(net) for name, net in self.networks.items()}
        return dict(self.networks)

    def autocast(self):
        if self.cuda and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.rng, device=self.device)

    def randint_t(self, n: int) -> torch.Tensor:
        return torch.randint(1, self.schedule.T + 1, (n,), generator=self.rng, device=self.device)

    def _finish_step(self, step: int) -> None:
        for sched in self.lr_schedulers.values():
            sched.step()
        for name, ema in self.ema.items():
            ema.update(self.networks[name], step)

    def nonfinite_weight(self) -> str | None:
        """Name of the first parameter that is not finite, or None."""
        for net_name, net in self.networks.items():
            for p_name, p in net.named_parameters():
                if not torch.isfinite(p).all():
                    return f"weight {net_name}.{p_name}"
        return None

    def state_dict(self) -> dict:
        return {
            "networks": {k: _unwrap(v).state_dict() for k, v in self.networks.items()},
            "ema": {k: v.state_dict() for k, v in self.ema.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "method_rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["networks"].items():
            _unwrap(self.networks[k]).load_state_dict(v)
        for k, v in state["ema"].items():
            self.ema[k].load_state_dict(v)
        for k, v in state["optimizers"].items():
            self.optimizers[k].load_state_dict(v)
        for k, v in state["lr_schedulers"].items():
            self.lr_schedulers[k].load_state_dict(v)
        self.rng.set_state(state["method_rng"].cpu())

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, memory_format=self.memory_format, non_blocking=True)


class DDGANMethod(Method):
    """Denoising diffusion GAN (Xiao et al. 2021, Alg. 1): one D update, then one G update."""

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__(cfg, device)
        obj = cfg.objective
        self.objective = get_objective(obj.loss, obj.generator_form)
        lr_g = cfg.train.lr_g
        self.optimizers = {
            "generator": _adam(self.networks["generator"].parameters(), lr_g, cfg),
            "discriminator": _adam(self.networks["discriminator"].parameters(), lr_g * cfg.train.d_lr_ratio, cfg),
        }
        self.lr_schedulers = {k: _lr_scheduler(v, cfg) for k, v in self.optimizers.items()}
        self.ema = {"generator": EMA(self.networks["generator"], cfg.train.ema_decay, cfg.train.ema_warmup)}
        # R1 and WGAN-GP differentiate D's input gradient (double backward), which
        # torch.compile's AOT autograd does not support: D then stays eager.
        penalty = obj.loss == "wgan-gp" or obj.r1_gamma > 0
        compiled = self._compile(skip=("discriminator",) if penalty else ())
        self.generator, self.discriminator = compiled["generator"], compiled["discriminator"]

    def _fake_prev(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_{t-1} ~ p_theta(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0 = G(x_t, z, t)), z ~ N(0, I)."""
        z = self.randn(x_t.shape[0], self.cfg.model.z_dim)
        x0_pred = self.generator(x_t, t, z)  # (B, 1, 28, 28)
        return self.schedule.sample_posterior(x0_pred.float(), x_t, t, self.randn(*x_t.shape))

    def _real_pair(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.randint_t(x0.shape[0])
        x_prev, x_t = self.schedule.q_sample_pair(x0, t, self.randn(*x0.shape), self.randn(*x0.shape))
        return x_prev, x_t, t

    def train_step(self, x0: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One D update, then one G update (Xiao et al. 2021, Alg. 1; train_ddgan.py).

        `objective.generator_draw`:
          * ``fresh`` (default, as the official train_ddgan.py): the G update draws t, x_t,
            z and the posterior noise afresh, so G is scored on fakes D has not just been
            trained to reject. D's fake is made without G's graph (D's loss never reaches G).
          * ``shared``: one draw serves both updates. G runs once, with its graph: D's
            update sees the fake detached, G's update backpropagates through the updated D
            into that same graph (G's weights have not changed in between). One G forward
            fewer a step.
        """
        obj = self.cfg.objective
        shared = obj.generator_draw == "shared"
        x0 = self.to_input(x0)
        # Discriminator update.
        self.discriminator.requires_grad_(True)
        x_prev, x_t, t = self._real_pair(x0)
        do_r1 = obj.r1_gamma > 0 and step % obj.r1_interval == 0 and obj.loss != "wgan-gp"
        x_prev.requires_grad_(do_r1)
        with self.autocast():
            with contextlib.nullcontext() if shared else torch.no_grad():
                fake_prev = self._fake_prev(x_t, t)
            v_real = self.discriminator(x_prev, x_t, t).float()
            v_fake = self.discriminator(fake_prev.detach(), x_t, t).float()
            d_loss = self.objective.discriminator_loss(v_real, v_fake)
        bound = self.objective.variational_bound(v_real.detach(), v_fake.detach())
        penalty = torch.zeros((), device=self.device)
        if do_r1:
            penalty = r1_penalty(v_real, x_prev, obj.r1_gamma)
        elif obj.loss == "wgan-gp":
            critic = lambda x: self.discriminator(x, x_t, t).float()  # noqa: E731
            penalty = gradient_penalty(critic, x_prev.detach(), fake_prev.detach(), obj.gp_weight, generator=self.rng)
        self._update("discriminator", d_loss + penalty)
        # Generator update, through the updated discriminator.
        self.discriminator.requires_grad_(False)
        with self.autocast():
            if not shared:
                t = self.randint_t(x0.shape[0])
                x_t = self.schedule.q_sample(x0, t, self.randn(*x0.shape))
                fake_prev = self._fake_prev(x_t, t)
            v_gen = self.discriminator(fake_prev, x_t, t).float()
            g_loss = self.objective.generator_loss(v_gen)
        self._update("generator", g_loss)
        self._finish_step(step)
        return {"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach(),
                "train/divergence_bound": bound, "train/d_penalty": penalty.detach()}

    def _update(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(self.networks[name].parameters(), self.cfg.train.grad_clip)
        opt.step()

    def sample(self, n: int, torch_generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return sample_ddgan(self.ema["generator"].module, self.schedule, n, z_dim=self.cfg.model.z_dim,
                            torch_generator=torch_generator, device=self.device)


class DDPMMethod(Method):
    """DDPM baseline (Ho et al. 2020): epsilon-prediction MSE at a uniformly drawn step."""

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__(cfg, device)
        self.optimizers = {"denoiser": _adam(self.networks["denoiser"].parameters(), cfg.train.lr_g, cfg)}
        self.lr_schedulers = {k: _lr_scheduler(v, cfg) for k, v in self.optimizers.items()}
        self.ema = {"denoiser": EMA(self.networks["denoiser"], cfg.train.ema_decay, cfg.train.ema_warmup)}
        self.denoiser = self._compile()["denoiser"]
        steps = cfg.eval.respaced_steps
        self.sample_schedule = self.schedule.respace(steps) if steps and steps < self.schedule.T else self.schedule

    def train_step(self, x0: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x0 = self.to_input(x0)
        t = self.randint_t(x0.shape[0])
        noise = self.randn(*x0.shape)
        x_t = self.schedule.q_sample(x0, t, noise)
        with self.autocast():
            eps = self.denoiser(x_t, t).float()
        loss = torch.mean((eps - noise) ** 2)
        opt = self.optimizers["denoiser"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(self.networks["denoiser"].parameters(), self.cfg.train.grad_clip)
        opt.step()
        self._finish_step(step)
        return {"train/loss": loss.detach()}

    def sample(self, n: int, torch_generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return sample_ddpm(self.ema["denoiser"].module, self.sample_schedule, n, torch_generator=torch_generator,
                           device=self.device, method=self.cfg.eval.sampler)


def build_method(cfg: Config, device: torch.device) -> Method:
    return DDGANMethod(cfg, device) if cfg.method == "ddgan" else DDPMMethod(cfg, device)
