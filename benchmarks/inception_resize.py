"""Inception's resize: clean-fid's per-channel path against one resize per grayscale image.

clean-fid's "clean" resizer resizes each channel of an RGB image on its own (a float32 PIL
image, bicubic, clipped). Fashion-MNIST is grayscale, so its three channels are the same:
`ddgan.metrics.inception.resize_for_inception` resizes the one channel once and expands it.
Both paths run side by side on the same images, interleaved repeat by repeat; the table gives
the median ms/image of each and the ratio, and checks that the outputs are bit-identical.
"per channel" is the path as it was (np.repeat to RGB, then clean-fid's resizer per image);
"once, contiguous" adds the copy to a dense (B, 3, 299, 299) tensor that a CPU network call
makes (on a GPU only the one channel is copied to the device and expanded there).

    python -m benchmarks.inception_resize --n 256 --repeats 5 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.common import header, write_table
from ddgan.cli import THREADS, ArgumentParser, Number, OutputDir, run_cli
from ddgan.metrics.inception import INPUT_SIZE, resize_for_inception


def per_channel(images_uint8: torch.Tensor) -> torch.Tensor:
    """The resize as it was: grayscale repeated to RGB, clean-fid's resizer on each image."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))
    x = np.repeat(images_uint8.cpu().numpy(), 3, axis=1)  # (B, 3, H, W)
    resized = [resize(image.transpose(1, 2, 0)) for image in x]  # each (299, 299, 3) float32
    return torch.from_numpy(np.stack(resized).transpose(0, 3, 1, 2).copy())  # (B, 3, 299, 299)


def measure(n: int, repeats: int, seed: int = 0) -> list[dict]:
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))
    paths = {"per channel (clean-fid, before)": per_channel,
             "once per image (expanded view)": resize_for_inception,
             "once per image, contiguous": lambda x: resize_for_inception(x).contiguous()}
    reference = per_channel(images[:8])
    for fn in paths.values():  # warm-up, and the equality check
        assert torch.equal(fn(images[:8]), reference), "the resize paths differ"
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn(images)
            seconds[name].append(time.perf_counter() - start)
    before = statistics.median(seconds["per channel (clean-fid, before)"])
    return [{"path": name, "ms_per_image": 1000 * statistics.median(s) / n,
             "speed_up": before / statistics.median(s)} for name, s in seconds.items()]


def table(rows: list[dict]) -> str:
    lines = ["| path | ms/image | speed-up vs per channel |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['ms_per_image']:.3f} | {r['speed_up']:.1f}x |" for r in rows]
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.inception_resize", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=Number(int, 8, 100_000), default=256, help="images per repeat (default: 256)")
    p.add_argument("--repeats", type=Number(int, 1, 1000), default=5, help="interleaved repeats; medians reported (default: 5)")
    p.add_argument("--threads", type=THREADS, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=OutputDir(), default=None, help="folder for inception_resize.md")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.n, args.repeats)
    text = header("Inception resize: per channel vs once per grayscale image", "cpu") + "\n" + table(rows) + \
        "\n\nOutputs bit-identical (checked on 8 images before timing)."
    print(text)
    write_table(args.out, "inception_resize.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
