"""Sample trials: evaluate a finished DDPM model with S respaced steps (ancestral or DDIM).

The respaced cells of a grid (`ddpm-<sampler>-S<S>`) train nothing: they run after
the training phase, download the final EMA model that their source trial logged to
MLflow (an export directory verified against its sha256 manifest), sample it with
`schedule.respace(S)` and score it with the same evaluator and noise as every trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddgan.config import Config
from ddgan.errors import CheckpointError


def run_sample_trial(spec: dict[str, Any], cfg: Config, context, run, reporter, work_dir: Path) -> None:
    """Evaluate the source trial's model once; log to MLflow and report to Ray as the final step."""
    from ddgan.export import load_for_sampling
    from ddgan.methods import schedule_for
    from ddgan.sampler import sample_ddpm
    from ddgan.trainer import pick_device
    from study.trainable import make_evaluator, protocol_tags

    source_run = context.run_ids[spec["source"]]
    try:
        model_dir = run.download(source_run, "model", work_dir / "source")
    except Exception as err:  # MLflow raises its own types for a missing artifact
        raise CheckpointError(f"trial {spec['source']!r} logged no final model (did it complete?): "
                              f"{type(err).__name__}") from None
    device = pick_device(cfg.train.device)
    model_cfg, denoiser = load_for_sampling(model_dir, device)
    schedule = schedule_for(model_cfg)
    steps = int(spec["sampling_steps"])
    if steps < schedule.T:
        schedule = schedule.respace(steps)
    sampler = spec["sampler"]

    def sample_fn(n, torch_generator):
        return sample_ddpm(denoiser, schedule, n, torch_generator=torch_generator, device=device, method=sampler)

    evaluator = make_evaluator(cfg, context, device)
    run.set_tags(**protocol_tags(evaluator))
    step = int(spec["total_steps"])
    metrics, artifacts = evaluator(sample_fn, step, work_dir / "samples", final=True)
    reporter.on_eval(step, metrics, artifacts, None)
    reporter.on_train_end(step, "completed")
