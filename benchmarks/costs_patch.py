"""Turn the JSON figures of benchmarks/gpu_check.sh into a patch of configs/costs.yaml.

Reads every `*.json` a benchmark wrote with `--json` (train_throughput, sample_speed,
packing, eval_cost, learning_check) from FIGURES_DIR, writes them merged as one JSON file,
and writes a unified diff that replaces the `gpu:` set of configs/costs.yaml by the
measured one, named by the card and date:

- train_step_s: batch / img/s of the trainer in the grid's setting (bf16 autocast +
  channels_last, no compile), per preset and method;
- nfe_ms_per_image: ms/image / NFE of the sampling rows (channels_last, the grid's eval
  batch): DDGAN the median over its T, DDPM its ancestral rows;
- packing: aggregate images/s of k packed trials / one alone (benchmarks/packing.py --direct);
- inception_ms_per_image: the Inception extractor's ms/image (not from a stand-in);
- `model` and its FLOP counts stay for what was not measured; start-up and evaluation
  overheads stay as they were.

    python -m benchmarks.costs_patch FIGURES_DIR --merged OUT/figures.json --patch OUT/costs.patch
    git apply OUT/costs.patch          # then commit configs/costs.yaml with the check's date and card
"""

from __future__ import annotations

import argparse
import difflib
import json
import statistics
import sys
from pathlib import Path

from ddgan.cli import ArgumentParser, InputPath, OutputFile, run_cli
from ddgan.config import CONFIG_DIR

COSTS = CONFIG_DIR / "costs.yaml"
GRID_VARIANT = "bf16"  # the grid's trials: train.amp and channels_last on, compile off


def load(figures_dir: Path) -> dict[str, dict]:
    """{benchmark: its JSON} for every JSON file in the folder (the latest file wins per benchmark)."""
    out = {}
    for path in sorted(figures_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if "benchmark" in data:
            out.setdefault(data["benchmark"], {"rows": []})
            out[data["benchmark"]] = {**data, "rows": out[data["benchmark"]]["rows"] + data["rows"]}
    return out


def measured(figures: dict[str, dict]) -> dict:
    """The measured fields of a `gpu:` set (only those the figures hold)."""
    fields: dict = {}
    train = [r for r in figures.get("train_throughput", {}).get("rows", []) if r.get("variant") == GRID_VARIANT]
    if train:
        fields["batch"] = train[0]["batch"]
        fields["train_step_s"] = {}
        for r in train:
            fields["train_step_s"].setdefault(r["preset"], {})[r["method"]] = round(r["batch"] / r["trainer img/s"], 5)
    sample = [r for r in figures.get("sample_speed", {}).get("rows", []) if r.get("model") in ("DDGAN", "DDPM")]
    if sample:
        per: dict = {}
        for r in sample:
            if r["model"] == "DDGAN" or r["sampler"] == "ancestral":
                per.setdefault(r["preset"], {}).setdefault(r["model"].lower(), []).append(r["ms/image"] / r["NFE"])
        fields["nfe_ms_per_image"] = {p: {m: round(statistics.median(v), 5) for m, v in row.items()}
                                      for p, row in per.items()}
    packing = figures.get("packing", {}).get("rows", [])
    if packing and "aggregate img/s" in packing[0]:
        fields["packing"] = {int(r["concurrent trials"]): round(r["vs 1"], 3) for r in packing
                             if r["concurrent trials"] > 1}
    inception = [r for r in figures.get("eval_cost", {}).get("rows", []) if r.get("extractor") == "inception"]
    if inception:
        fields["inception_ms_per_image"] = round(inception[0]["ms/image"], 4)
    return fields


def _flow(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def notes(figures: dict[str, dict]) -> list[str]:
    """Comment lines: what else the check measured (compile, the S=1000 FID sampling, learning)."""
    lines = []
    for r in figures.get("train_throughput", {}).get("rows", []):
        if r.get("variant") != GRID_VARIANT:
            lines.append(f"{r['preset']} {r['method']} {r['variant']}: {r['ms/step']:.1f} ms/step at batch {r['batch']}")
    for r in figures.get("sample_speed", {}).get("rows", []):
        if r.get("model") == "DDPM S=1000 FID":
            lines.append(f"DDPM S=1000, {r['samples']} samples ({r['preset']}): {r['extrapolated s']:.0f} s, {r['how']}")
    learned = figures.get("learning_check", {}).get("rows", [])
    fd = [r for r in learned if str(r.get("metric", "")).startswith("eval/fd")]
    if fd:
        lines.append(f"learning check: {fd[0]['metric']} {fd[0]['value']:.4g} at step {fd[0]['step']} -> "
                     f"{fd[-1]['value']:.4g} at step {fd[-1]['step']} ({fd[-1]['wall s']:.0f} s)")
    return lines


def gpu_block(old: dict, figures: dict[str, dict]) -> str:
    """The new `gpu:` set as YAML text: measured fields over the old set's."""
    new = measured(figures)
    source = next(iter(figures.values()), {})
    machine = source.get("machine", "")
    card = machine.split("GPU: ", 1)[1] if "GPU: " in machine else source.get("device", "GPU")
    date = source.get("date", "?")
    stand_in = any("STAND-IN" in str(r.get("extractor", "")) for r in figures.get("eval_cost", {}).get("rows", []))
    lines = ["gpu:", f"  name: {json.dumps(f'{card} (measured {date}, benchmarks/gpu_check.sh)')}",
             f"  # measured on {source.get('machine', card)}, {date}; what was not measured comes from `model`",
             *(f"  # {line}" for line in notes(figures))]
    if stand_in:
        lines.append("  # Inception was timed with a stand-in (no weights on the machine): inception_ms_per_image kept")
    source_text = (f"measured by benchmarks/gpu_check.sh on {card} ({date}): trainer at the grid's batch (bf16, "
                   "channels_last), sampling at the grid's eval batch (channels_last), packing in steady state")
    lines.append(f"  source: {json.dumps(source_text)}")
    for key in ("batch", "model", "train_step_s", "nfe_ms_per_image", "packing", "eval_overhead_s", "trial_startup_s",
                "study_startup_s", "inception_ms_per_image"):
        value = new.get(key, old.get(key)) if key != "model" else old.get(key)
        if value is not None:
            lines.append(f"  {key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def patch(costs_text: str, figures: dict[str, dict], name: str = "configs/costs.yaml") -> str:
    """A unified diff of `costs_text` with its `gpu:` set (the file's last) replaced."""
    import yaml

    old = yaml.safe_load(costs_text)["gpu"]
    head = costs_text[: costs_text.index("\ngpu:\n") + 1]
    new_text = head + gpu_block(old, figures)
    return "".join(difflib.unified_diff(costs_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        f"a/{name}", f"b/{name}"))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.costs_patch", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figures", type=InputPath("dir"), help="folder of the benchmarks' --json files")
    p.add_argument("--merged", type=OutputFile(".json", writer="JSON"), default=None, help="all figures in one file")
    p.add_argument("--patch", type=OutputFile(".patch", writer="a unified diff"), default=None,
                   help="the patch of configs/costs.yaml (else printed)")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    figures = load(Path(args.figures))
    if args.merged:
        Path(args.merged).write_text(json.dumps(figures, indent=1) + "\n")
    diff = patch(COSTS.read_text(), figures)
    if args.patch:
        Path(args.patch).write_text(diff)
    else:
        print(diff)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
