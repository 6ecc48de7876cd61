"""Typed, strict run configuration: YAML file + model preset + dotted overrides.

A run is described by one `Config`. It is built from a YAML file in `configs/`,
the model preset it names (`configs/presets/<name>.yaml`) and `key=value`
overrides such as `train.lr_g=2e-4`. Every section forbids unknown keys, so a
typo is an error that names the key and lists the valid ones. The resolved
config (`Config.to_dict()`) is saved beside every run and inside every
checkpoint, and is enough to rebuild the schedule and the networks.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from ddgan.errors import ConfigError
from ddgan.strict import Strict as _Section
from ddgan.strict import section_model, validate

CONFIG_DIR = Path(os.environ.get("DDGAN_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
PRESET_DIR = CONFIG_DIR / "presets"


class DataConfig(_Section):
    dir: str | None = None  # None: $DDGAN_DATA_DIR, else torchvision download if `download`
    download: bool = False  # allow torchvision to download when no directory is found
    split: Literal["train", "test"] = "train"
    subset: int | None = Field(default=None, gt=0, le=60_000)  # first N images (tests, quick runs)


class ModelConfig(_Section):
    preset: str | None = None
    base_channels: int = Field(default=32, gt=0, le=1024)
    channel_mult: tuple[int, ...] = (1, 2, 2)  # resolutions 28 / 14 / 7
    num_res_blocks: int = Field(default=1, ge=1, le=8)
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    t_emb_dim: int = Field(default=64, gt=0, le=4096)
    z_dim: int = Field(default=100, gt=0, le=4096)  # DDGAN latent
    z_emb_dim: int = Field(default=64, gt=0, le=4096)  # width of the latent mapping MLP
    n_mlp: int = Field(default=4, ge=0, le=16)  # latent mapping: Linear(z_dim) + n_mlp Linear (official: --n_mlp 4)
    # Discriminator (official Discriminator_small): level i has disc_channels * disc_channel_mult[i]
    # channels at 28 / 14 / 7 / 3; the official CIFAR-10 D is 64 x (2, 4, 8, 8).
    disc_channels: int = Field(default=32, gt=0, le=1024)
    disc_channel_mult: tuple[int, ...] = (2, 4, 8, 8)
    disc_stddev_group: int = Field(default=4, ge=0, le=64)  # minibatch stddev group; 0: off

    @field_validator("channel_mult", "disc_channel_mult")
    @classmethod
    def _levels(cls, v: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        resolutions = (28, 14, 7, 3) if info.field_name == "disc_channel_mult" else (28, 14, 7)  # U-Net: 3
        if not 1 <= len(v) <= len(resolutions) or any(m <= 0 for m in v):
            raise ValueError(f"needs 1 to {len(resolutions)} positive multipliers "
                             f"(resolutions {', '.join(map(str, resolutions))})")
        return v


class DiffusionConfig(_Section):
    T: int = Field(default=4, ge=1, le=10_000)  # tables and sampling loops of T steps
    schedule: Literal["vp", "linear", "cosine"] = "vp"
    beta_min: float = Field(default=0.1, gt=0, le=1000, allow_inf_nan=False)
    beta_max: float = Field(default=20.0, gt=0, le=1000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ranges(self) -> DiffusionConfig:
        if self.beta_max <= self.beta_min:
            raise ValueError("beta_max must be greater than beta_min")
        return self


class ObjectiveConfig(_Section):
    loss: str = "ns"
    # None: the objective's own default (ddgan.losses.DEFAULT_GENERATOR_FORMS), filled in on load
    generator_form: Literal["nonsaturating", "minimax", "log"] | None = None
    generator_draw: Literal["fresh", "shared"] = "fresh"  # G update: fresh t, x_t, z (official) or D's draw
    r1_gamma: float = Field(default=0.02, ge=0, le=1e4, allow_inf_nan=False)
    r1_interval: int = Field(default=15, ge=1, le=10_000)  # lazy R1 every k D steps (official --lazy_reg 15)
    gp_weight: float = Field(default=10.0, ge=0, le=1e4, allow_inf_nan=False)  # wgan-gp only

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from ddgan.losses import objective_names

        if v not in objective_names():
            raise ValueError(f"unknown loss {v!r}; valid: {', '.join(objective_names())}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_generator_form(cls, data: Any) -> Any:
        """Record the objective's default generator form, so the saved config names it."""
        from ddgan.losses import default_generator_form, objective_names

        if isinstance(data, dict) and data.get("generator_form") is None:
            loss = data.get("loss", "ns")
            if loss in objective_names():
                data = {**data, "generator_form": default_generator_form(loss)}
        return data

    @model_validator(mode="after")
    def _form_defined(self) -> ObjectiveConfig:
        from ddgan.losses import get_objective

        get_objective(self.loss, self.generator_form)  # ValueError if the form is undefined for it
        return self


class TrainConfig(_Section):
    steps: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    lr_g: float = Field(default=1.6e-4, gt=0, le=1.0, allow_inf_nan=False)  # generator / denoiser learning rate (the study's axis)
    d_lr_ratio: float = Field(default=0.78125, gt=0, le=100, allow_inf_nan=False)  # lr_d = lr_g * ratio (DDGAN CIFAR: 1.25e-4 / 1.6e-4)
    beta1: float = Field(default=0.5, ge=0, lt=1)
    beta2: float = Field(default=0.9, ge=0, lt=1)
    cosine_decay: bool = False
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)), see ddgan.ema
    grad_clip: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True  # CUDA only
    compile: bool = False
    log_every: int = Field(default=10, ge=1, le=10_000_000)


class EvalConfig(_Section):
    every: int = Field(default=500, ge=1, le=10_000_000)
    n_samples: int = Field(default=256, ge=1, le=100_000)
    batch_size: int = Field(default=256, ge=1, le=4096)
    seed: int = Field(default=1234, ge=0, le=2**63 - 1)  # fixed, so every trial is scored on the same noise
    grid_size: int = Field(default=8, ge=1, le=32)  # an 8x8 sample grid per evaluation
    metrics: tuple[str, ...] = ()  # e.g. ("fd_fmnist",); empty: losses, grid and timing only
    final_metrics: tuple[str, ...] = ()  # extra metrics at the last step only (e.g. fid_inception)
    final_n_samples: int | None = Field(default=None, ge=1, le=100_000)
    reference_split: Literal["train", "test"] = "train"
    reference_n: int | None = Field(default=None, ge=2, le=60_000)  # None: the whole split (Inception on CPU: cap it)
    respaced_steps: int | None = Field(default=None, ge=1, le=10_000)  # DDPM: sample with S < T steps
    sampler: Literal["ancestral", "ddim"] = "ancestral"  # DDPM only
    # How evaluation samples (ddgan.sampler.sampling_numerics): fp32 (TF32 off) unless asked;
    # bf16 autocast and torch.compile are for GPUs, once FID is shown unchanged within its noise.
    sample_precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    compile_sampler: bool = False

    @field_validator("metrics", "final_metrics")
    @classmethod
    def _known_metrics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from ddgan.metrics.evaluator import valid_metric_specs

        unknown = [m for m in v if m not in valid_metric_specs()]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; valid: {', '.join(valid_metric_specs())}")
        return v

    @model_validator(mode="after")
    def _fid_sample_count(self) -> EvalConfig:
        """Inception FID on fewer samples than its 2048 feature dimensions has a rank-deficient
        covariance and a large 1/N bias: refused; KID is unbiased at any N."""
        from ddgan.metrics.fid_infinity import MIN_FID_SAMPLES

        final_n = self.final_n_samples or self.n_samples
        for key, names, n in (("n_samples", self.metrics, self.n_samples),
                              ("final_n_samples", self.final_metrics, final_n)):
            if "fid_inception" in names and n < MIN_FID_SAMPLES:
                raise ValueError(f"fid_inception on {n} samples (eval.{key}): Inception FID needs >= "
                                 f"{MIN_FID_SAMPLES} (its feature dimension); use kid_inception below that")
        return self


class CheckpointConfig(_Section):
    every: int | None = Field(default=None, ge=1, le=10_000_000)  # None: at every evaluation
    keep: int = Field(default=2, ge=1, le=1000)


class Config(_Section):
    method: Literal["ddgan", "ddpm"] = "ddgan"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _method_rules(self) -> Config:
        if self.method == "ddgan" and self.diffusion.schedule != "vp":
            raise ValueError("diffusion.schedule: DDGAN uses the 'vp' schedule")
        group = min(self.train.batch_size, self.model.disc_stddev_group)
        if self.method == "ddgan" and group > 0 and self.train.batch_size % group:
            raise ValueError(f"train.batch_size {self.train.batch_size} must be a multiple of "
                             f"model.disc_stddev_group {group} (minibatch stddev groups)")
        if self.method == "ddpm" and self.eval.respaced_steps and self.eval.respaced_steps > self.diffusion.T:
            raise ValueError("eval.respaced_steps cannot exceed diffusion.T")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): YAML/JSON safe, round-trips through `from_dict`."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Config:
        # Checkpoints and exports written before fault injection moved to the study carry
        # an empty `fault` section: dropped, so they still load.
        return _validate({k: v for k, v in raw.items() if k != "fault"})


def valid_keys(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _validate(raw: dict[str, Any]) -> Config:
    return validate(Config, raw, "config")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr_g=2e-4"` -> (["train", "lr_g"], 0.0002); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str):
        parsed = _maybe_float(parsed)
    return path, parsed


def _maybe_float(s: str) -> Any:
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    try:
        return float(s) if any(c.isdigit() for c in s) and s.strip().lower() not in ("nan", "inf") else s
    except ValueError:
        return s


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str | tuple[list[str], Any]]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted overrides applied; unknown keys name the valid ones."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        path, value = parse_override(item) if isinstance(item, str) else item
        section = section_model(Config, path[:-1])
        if section is None:
            raise ConfigError(f"config: unknown section {'.'.join(path[:-1])!r} (valid: {', '.join(valid_keys(Config))})")
        if path[-1] not in section.model_fields:
            where = ".".join(path[:-1]) or "top level"
            raise ConfigError(
                f"config: unknown key {'.'.join(path)!r} in {where} (valid keys: {', '.join(valid_keys(section))})"
            )
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config: {'.'.join(path[:-1])} is not a section")
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, not {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _merge_preset(raw: dict[str, Any]) -> dict[str, Any]:
    model = dict(raw.get("model") or {})
    name = model.get("preset")
    if name is None:
        return raw
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config: model.preset: unknown preset {name!r}; valid: {', '.join(preset_names())}")
    merged = {**read_yaml(path), **model}
    return {**raw, "model": merged}


def resolve_config(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Base mapping + overrides + preset -> validated Config."""
    return _validate(_merge_preset(apply_overrides(raw, overrides)))


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file (or defaults when `path` is None) with dotted overrides."""
    raw = read_yaml(path) if path is not None else {}
    return resolve_config(raw, overrides)


def flatten(cfg: Config | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train.lr_g": 1.6e-4, ...}: the flat form MLflow stores as params."""
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def save_config(cfg: Config, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(p)
    return p
