"""Where a study keeps its state, and the one way to reach it.

  uris           store locations: embedded defaults under results/runs/, validation, masking
  connect        preflight (reachable, writable) and creation of the databases
  mlflow_client  `MlflowStore`: public MlflowClient calls that retry; run search; server probe
  tracking       the study's MLflow layout: parent run, one run per trial, no duplicate steps
  registry       exported samplers in the MLflow Model Registry
  history        when each invocation of a study ran (history.json in the run state)
"""

from study.stores.connect import init_stores, optuna_storage, preflight
from study.stores.uris import (
    Stores,
    mask_uri,
    mlflow_uri_for,
    normalize_mlflow_uri,
    normalize_optuna_url,
    resolve_stores,
)

__all__ = ["Stores", "init_stores", "mask_uri", "mlflow_uri_for", "normalize_mlflow_uri",
           "normalize_optuna_url", "optuna_storage", "preflight", "resolve_stores"]
