"""The results: read a study back from MLflow and write its tables, figures and REPORT.md.

  data      the study as MLflow holds it: parent run, one summary row per trial, histories
  tables    pure functions of the summary: best lr per cell, intervals, speed, Pareto front
  figures   matplotlib figures (fixed pixel sizes)
  markdown  REPORT.md
  build     all of it, written to a directory (`build_report`)
  cli       `python -m study.report`
"""
