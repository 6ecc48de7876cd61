"""The study's planned contrasts: named in the grid file (`contrasts:`), or derived from its axes.

A contrast is the mean over cells `a` minus the mean over cells `b`, planned before any number
is seen (never "the best cell against the rest"). The defaults answer the study's questions
with few contrasts, because every extra one raises Holm's bar for all of them:

  * objective at fixed T: each objective against the reference objective `ns` (the paper's
    default, the best a priori) at every T where both are in the grid; k - 1 contrasts per T,
    not the k (k - 1) / 2 of all pairs;
  * T within an objective, at equal training images: each T against the objective's smallest T
    (does a denoising chain help, and from which T);
  * T within an objective, at equal updates per denoising step: only where the grid trains such
    cells. A grid's budget is one number of images for every cell (`budget:`), so each of T's
    steps sees 1/T of the updates; this contrast is then reported as "not in this design";
  * DDGAN against DDPM at equal NFE: the reference objective at T against every DDPM cell that
    samples with S = T network evaluations. The generator and the denoiser are the same network,
    so equal NFE is also equal sampling time; the report prints both sides' measured ms/image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ddgan.errors import ConfigError, UsageError
from study.grid import Grid, expand, load_grid
from study.report.tables import duplicated_by_sampling_cell

REFERENCE_LOSS = "ns"
KIND_TITLES = {
    "objective_at_T": "objective at fixed T",
    "T_at_equal_images": "T within an objective, at equal training images",
    "T_at_equal_updates": "T within an objective, at equal updates per denoising step",
    "ddgan_vs_ddpm_at_equal_nfe": "DDGAN vs DDPM at equal NFE (network evaluations per sample; the measured "
                                  "sampling time of each side is printed beside the claim)",
    "other": "other planned contrasts",
}


@dataclass(frozen=True)
class Planned:
    name: str
    kind: str
    a: tuple[str, ...] = ()
    b: tuple[str, ...] = ()
    absent: str | None = None  # why the design cannot answer it ("not in this design: ...")


@dataclass(frozen=True)
class ContrastPlan:
    contrasts: tuple[Planned, ...]
    source: str  # where the contrasts come from, in words
    variance: str = "study"  # "study" | "contrast" | "groups" (see study.grid.Contrasts)
    alpha: float = 0.05
    power: float = 0.8


@dataclass(frozen=True)
class CellInfo:
    cell: str
    method: str
    loss: str | None
    T: int
    nfe: int | None  # network evaluations per sample; None where not known from the design


def _ddgan_cell(loss: str, T: int) -> str:
    return f"ddgan-{loss}-T{T}"


def default_contrasts(cells: list[CellInfo], equal_updates: bool = False) -> list[Planned]:
    """The default planned contrasts of a design (see the module docstring)."""
    ddgan = [c for c in cells if c.method == "ddgan"]
    losses = list(dict.fromkeys(c.loss for c in ddgan))
    have = {c.cell for c in ddgan}
    out: list[Planned] = []
    if not losses:
        return out
    reference = REFERENCE_LOSS if REFERENCE_LOSS in losses else losses[0]
    for T in sorted({c.T for c in ddgan}):
        for loss in losses:
            if loss != reference and {_ddgan_cell(loss, T), _ddgan_cell(reference, T)} <= have:
                out.append(Planned(f"{loss} vs {reference} at T={T}", "objective_at_T",
                                   (_ddgan_cell(loss, T),), (_ddgan_cell(reference, T),)))
    for loss in losses:
        ts = sorted(c.T for c in ddgan if c.loss == loss)
        out += [Planned(f"{loss}: T={T} vs T={ts[0]}, equal images", "T_at_equal_images",
                        (_ddgan_cell(loss, T),), (_ddgan_cell(loss, ts[0]),)) for T in ts[1:]]
    if not equal_updates:
        out.append(Planned("T at equal updates per denoising step", "T_at_equal_updates", absent=(
            "not in this design: every DDGAN cell trains on the same number of images, so each of T's "
            "denoising steps gets 1/T of the updates")))
    out += _ddpm_contrasts(cells, reference)
    return out


def _ddpm_contrasts(cells: list[CellInfo], reference: str) -> list[Planned]:
    ddpm = [c for c in cells if c.method == "ddpm" and c.nfe is not None]
    refs = sorted((c for c in cells if c.method == "ddgan" and c.loss == reference), key=lambda c: c.T)
    matched = [Planned(f"{reference} T={g.T} vs {d.cell} (NFE {g.T})", "ddgan_vs_ddpm_at_equal_nfe",
                       (g.cell,), (d.cell,)) for g in refs for d in ddpm if d.nfe == g.T]
    if matched or not refs:
        return matched
    nfes = sorted({c.nfe for c in ddpm})
    what = f"DDPM is sampled with NFE {nfes}" if nfes else "the grid has no DDPM cell"
    return [Planned("DDGAN vs DDPM at equal NFE", "ddgan_vs_ddpm_at_equal_nfe", absent=(
        f"not in this design: {what}, DDGAN at T {[g.T for g in refs]}"))]


def grid_cell_infos(grid: Grid) -> list[CellInfo]:
    """The cells of a grid with their NFE (a DDPM model that is also respaced is scored while it
    trains with the respaced sampler, so its own cell has no fixed NFE here)."""
    infos = []
    if grid.ddgan is not None:
        infos += [CellInfo(_ddgan_cell(loss, T), "ddgan", loss, T, T) for loss in grid.ddgan.losses
                  for T in grid.ddgan.T_of(loss)]
    if grid.ddpm is not None:
        respaced = grid.ddpm.respaced
        infos += [CellInfo(f"ddpm-T{T}", "ddpm", None, T, None if respaced and T == respaced.T else T)
                  for T in grid.ddpm.T]
        if respaced is not None:
            if respaced.T not in grid.ddpm.T:
                infos.append(CellInfo(f"ddpm-T{respaced.T}", "ddpm", None, respaced.T, None))
            infos += [CellInfo(f"ddpm-{sampler}-S{S}", "ddpm", None, respaced.T, S)
                      for sampler in respaced.samplers for S in respaced.steps]
    return infos


def _not_planned(planned: list[Planned], design: list[Planned] | None = None) -> list[Planned]:
    """The questions a grid's own list leaves out; where the design itself cannot answer one (e.g. T
    at equal updates when every cell trains on the same images), that reason (from `design`, the
    defaults of its axes), else "not planned"."""
    kinds = {p.kind for p in planned}
    why = {p.kind: p.absent for p in design or () if p.absent}
    return [Planned(KIND_TITLES[k], k, absent=why.get(k, "not planned in this grid's `contrasts:`"))
            for k in ("objective_at_T", "T_at_equal_images", "T_at_equal_updates", "ddgan_vs_ddpm_at_equal_nfe")
            if k not in kinds]


def plan_from_grid(grid: Grid, where: str) -> ContrastPlan:
    settings = grid.contrasts
    if settings.planned is None:
        contrasts = default_contrasts(grid_cell_infos(grid))
        source = f"the defaults derived from the axes of grid `{where}`"
    else:
        contrasts = [Planned(c.name, c.kind, c.a, c.b) for c in settings.planned]
        contrasts += _not_planned(contrasts, default_contrasts(grid_cell_infos(grid)))
        source = f"`contrasts.planned` of grid `{where}`"
    return ContrastPlan(tuple(contrasts), source, settings.variance, settings.alpha, settings.power)


def best_cell_infos(best: pd.DataFrame) -> list[CellInfo]:
    """The study's own cells (best_by_cell rows), when its grid file cannot be read."""
    rows = best[~duplicated_by_sampling_cell(best)] if len(best) else best
    return [CellInfo(str(r["cell"]), str(r["method"]), r["loss"] if r["method"] == "ddgan" else None, int(r["T"]),
                     None if pd.isna(r["sampling_steps"]) else int(r["sampling_steps"])) for _, r in rows.iterrows()]


def lr_choice_from_tags(tags: dict[str, str]) -> dict[str, float] | None:
    """The rates a pilot chose, as the study's parent run records them (`lr_chosen.<group>` tags)."""
    found = {k.removeprefix("lr_chosen."): float(v) for k, v in tags.items() if k.startswith("lr_chosen.")}
    return found or None


def study_plan(grid_path: str | None, best: pd.DataFrame, fingerprint: str | None = None,
               lr_choice: dict[str, float] | None = None) -> ContrastPlan:
    """The grid file the study recorded (parent-run tag `grid`), else the defaults of its cells.
    A grid file whose trials no longer match the study's `fingerprint` tag is used, and said so
    (a grid with a pilot is expanded at the rates the pilot chose, `lr_choice`)."""
    why = "the study recorded no grid file"
    if grid_path:
        why = f"its grid file `{grid_path}` is not on this machine"
        if Path(grid_path).is_file():
            try:
                grid, path = load_grid(grid_path)
                plan = plan_from_grid(grid, grid_path)
                if fingerprint and expand(grid, path, lr_choice if grid.pilot else None).fingerprint() != fingerprint:
                    plan = replace(plan, source=plan.source + " (the file has changed since the study ran: its "
                                                              "trials no longer match the study's fingerprint)")
                return plan
            except (ConfigError, UsageError) as err:
                why = f"its grid file `{grid_path}` does not load ({err})"
    return ContrastPlan(tuple(default_contrasts(best_cell_infos(best))),
                        f"the defaults derived from the study's cells ({why})")
