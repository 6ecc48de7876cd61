"""The study's claims, each decided by its 95% intervals over seeds (pure functions of best_by_cell).

A claim compares two cells on the same metric. It is **resolved** when the two intervals do not
overlap (the better cell's whole interval lies on the better side of the other's), **not
resolved at this scale** when they overlap, and has **no interval** when a cell has fewer than
two seeds. The claims a report makes:

  * best objective at each T, and overall: the best loss against each other loss;
  * effect of T, per objective: its smallest T against its best T (and against its largest);
  * DDGAN against DDPM at equal training images: the best DDGAN cell against the best DDPM
    cell on the same metric (the images seen of both are printed: equal or not);
  * DDGAN against DDPM at equal sampling time: the best DDGAN cell against the best DDPM cell
    that samples no slower than it (or, if none does, the fastest DDPM cell, said so).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from study.report.tables import MS, cell_label, fmt, fmt_interval

RESOLVED, UNRESOLVED, NO_INTERVAL = "resolved", "not resolved at this scale", "no interval (fewer than 2 seeds)"


@dataclass(frozen=True)
class Claim:
    topic: str
    statement: str
    verdict: str  # RESOLVED | UNRESOLVED | NO_INTERVAL


def verdict(better: pd.Series, worse: pd.Series, metric: str, mode: str) -> str:
    """Whether `better`'s interval lies wholly on the better side of `worse`'s."""
    lo_b, hi_b = better[f"{metric}_ci_low"], better[f"{metric}_ci_high"]
    lo_w, hi_w = worse[f"{metric}_ci_low"], worse[f"{metric}_ci_high"]
    if any(pd.isna(v) for v in (lo_b, hi_b, lo_w, hi_w)):
        return NO_INTERVAL
    apart = hi_b < lo_w if mode == "min" else lo_b > hi_w
    return RESOLVED if apart else UNRESOLVED


def _scored(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    return best[best[f"{metric}_mean"].notna()]


def _order(frame: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    return frame.sort_values(f"{metric}_mean", ascending=mode == "min", kind="stable")


def _v(row: pd.Series, metric: str) -> str:
    return fmt_interval(row[f"{metric}_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) or "?"


def _against(top: pd.Series, others: pd.DataFrame, metric: str, mode: str) -> tuple[str, str]:
    """(text of each comparison, overall verdict) of `top` against every row of `others`."""
    parts, verdicts = [], []
    for _, other in others.iterrows():
        v = verdict(top, other, metric, mode)
        verdicts.append(v)
        parts.append(f"{cell_label(other)} {_v(other, metric)}: {v}")
    if not verdicts:
        return "", NO_INTERVAL
    if all(v == RESOLVED for v in verdicts):
        overall = RESOLVED
    elif UNRESOLVED in verdicts:  # one overlap settles it, whatever lacks an interval
        overall = UNRESOLVED
    else:
        overall = NO_INTERVAL
    return "; ".join(parts), overall


def objective_claims(best: pd.DataFrame, metric: str, mode: str) -> list[Claim]:
    ddgan = _scored(best[best["method"] == "ddgan"], metric)
    claims = []
    for T, group in ddgan.groupby("T", sort=True):
        ranked = _order(group, metric, mode)
        if len(ranked) < 2:
            continue
        top = ranked.iloc[0]
        text, overall = _against(top, ranked.iloc[1:], metric, mode)
        claims.append(Claim(f"best objective at T={T}",
                            f"{top['loss']} {_v(top, metric)} is best; against {text}", overall))
    per_loss = _order(ddgan, metric, mode).drop_duplicates("loss")
    if len(per_loss) >= 2:
        top = per_loss.iloc[0]
        text, overall = _against(top, per_loss.iloc[1:], metric, mode)
        claims.append(Claim("best objective overall (each at its best T)",
                            f"{cell_label(top)} {_v(top, metric)} is best; against {text}", overall))
    return claims


def t_claims(best: pd.DataFrame, metric: str, mode: str) -> list[Claim]:
    ddgan = _scored(best[best["method"] == "ddgan"], metric)
    claims = []
    for loss, group in ddgan.groupby("loss", sort=False):
        if group["T"].nunique() < 2:
            continue
        by_t = group.sort_values("T")
        smallest, largest = by_t.iloc[0], by_t.iloc[-1]
        top = _order(group, metric, mode).iloc[0]
        if top["T"] == smallest["T"]:
            text, overall = _against(top, by_t.iloc[1:], metric, mode)
            claims.append(Claim(f"effect of T ({loss})", f"T={top['T']} {_v(top, metric)} (the smallest T) is "
                                f"best; against {text}", overall))
            continue
        v = verdict(top, smallest, metric, mode)
        text = f"T={top['T']} {_v(top, metric)} is better than T={smallest['T']} {_v(smallest, metric)}: {v}"
        if top["T"] != largest["T"]:
            text += (f"; T={largest['T']} {_v(largest, metric)} against T={top['T']}: "
                     f"{verdict(top, largest, metric, mode)}")
        claims.append(Claim(f"effect of T ({loss})", text, v))
    return claims


def _images(row: pd.Series) -> str:
    value = row.get("images_seen")
    return f"{int(value):,} images" if value is not None and not pd.isna(value) else "images ?"


def ddpm_claims(best: pd.DataFrame, metric: str, mode: str) -> list[Claim]:
    ddgan = _order(_scored(best[best["method"] == "ddgan"], metric), metric, mode)
    ddpm = _order(_scored(best[best["method"] == "ddpm"], metric), metric, mode)
    with_interval = ddpm[ddpm[f"{metric}_ci_low"].notna()]
    ddpm = with_interval if len(with_interval) else ddpm  # a one-seed cell cannot resolve anything
    if ddgan.empty or ddpm.empty:
        return []
    g, d = ddgan.iloc[0], ddpm.iloc[0]
    winner, loser = (g, d) if _better(g, d, metric, mode) else (d, g)
    images = (g.get("images_seen"), d.get("images_seen"))
    if any(v is None or pd.isna(v) for v in images):
        topic = "DDGAN vs DDPM (training images not recorded)"
    else:
        topic = "DDGAN vs DDPM at equal training images" if images[0] == images[1] else \
            "DDGAN vs DDPM (UNEQUAL training images)"
    claims = [Claim(topic,
                    f"best DDGAN {cell_label(g)} {_v(g, metric)} ({_images(g)}) against best DDPM {cell_label(d)} "
                    f"{_v(d, metric)} ({_images(d)}): {cell_label(winner)} is better",
                    verdict(winner, loser, metric, mode))]
    ms = g.get(MS)
    if ms is not None and not pd.isna(ms):
        timed = ddpm[ddpm[MS].notna()]
        no_slower = timed[timed[MS] <= ms]
        note = "samples no slower"
        if no_slower.empty and len(timed):
            no_slower, note = timed.sort_values(MS).head(1), "is the fastest DDPM cell, and still slower"
        if len(no_slower):
            d = no_slower.iloc[0]
            winner, loser = (g, d) if _better(g, d, metric, mode) else (d, g)
            claims.append(Claim("DDGAN vs DDPM at equal sampling time",
                                f"best DDGAN {cell_label(g)} {_v(g, metric)} at {fmt(ms, 3)} ms/image against "
                                f"DDPM {cell_label(d)} {_v(d, metric)} at {fmt(d[MS], 3)} ms/image (it {note}): "
                                f"{cell_label(winner)} is better", verdict(winner, loser, metric, mode)))
    return claims


def _better(a: pd.Series, b: pd.Series, metric: str, mode: str) -> bool:
    x, y = a[f"{metric}_mean"], b[f"{metric}_mean"]
    return bool(x < y) if mode == "min" else bool(x > y)


def study_claims(best: pd.DataFrame, metric: str, mode: str) -> list[Claim]:
    if best.empty or f"{metric}_mean" not in best:
        return []
    return objective_claims(best, metric, mode) + t_claims(best, metric, mode) + ddpm_claims(best, metric, mode)


def claims_section(best: pd.DataFrame, metric: str, mode: str) -> list[str]:
    claims = study_claims(best, metric, mode)
    if not claims:
        return []
    lines = ["## Claims and their intervals", "",
             f"Each claim compares cells on `{metric}` (mean and 95% interval over seeds). **Resolved**: the "
             "intervals do not overlap; **not resolved at this scale**: they overlap; no interval: a cell has "
             "fewer than two seeds. Generated from best_by_cell.csv.", ""]
    lines += [f"- **{c.topic}: {c.verdict}.** {c.statement}." for c in claims]
    return lines + [""]
