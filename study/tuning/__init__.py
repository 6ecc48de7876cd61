"""The Ray Tune side of a study: phases, the trial function, per-cell pruning, fault injection.

  phases   one Tune experiment per phase (train, then sample), the driver's hooks, resume
  trial    the Ray Tune function: train phase (`ddgan.trainer.train`) and sample phase
  pruning  Optuna decides within a cell: a Tune scheduler and the Optuna bookkeeping
  faults   faults a grid asks for, installed around the trainer (reliability tests)
  references  the reference statistics as one Ray task on the trials' device, before any trial
"""

from study.tuning.phases import DriverHooks, init_ray, run_phase

__all__ = ["DriverHooks", "init_ray", "run_phase"]
