"""The study: DDGAN objectives x T against DDPM, run with Ray Tune, Optuna and MLflow.

  run, report, export, ui   the CLIs (`python -m study.<name>`); each calls one library function
  grid                      grid files: strict schema, expansion into cells and trials
  prepare, driver, summary  validate everything, then run the phases; the plan and the summary
  tuning/                   the Ray Tune side: phases, the trial function, per-cell pruning, faults
  stores/                   where the state lives: URIs, preflight, the MLflow layer, tracking, registry
  report/                   the results: data from MLflow, tables, figures, REPORT.md
"""
