"""Train the Fashion-MNIST feature classifier once and record it.

    python -m ddgan.metrics.train_classifier --data-dir ../shared/data/fashion-mnist \
        --out ddgan/metrics/weights/

Seeded (torch CPU, fp32, no worker processes), light augmentation (horizontal flip,
+-1 px shifts), AdamW with a one-cycle schedule. Writes `fmnist_classifier.pt`
(a state dict) and `fmnist_classifier.json` (sha256 of that file, seed, test
accuracy, the command, the training time). Fails (exit 1) below the 91% test
accuracy the issue asks for, so a bad run never replaces good weights silently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddgan.cli import SEED, THREADS, ArgumentParser, InputPath, Number, OutputDir
from ddgan.data import load_fashion_mnist, resolve_data_dir, to_model_range
from ddgan.errors import UsageError
from ddgan.metrics.digest import sha256_file
from ddgan.metrics.fmnist_classifier import (
    ARCHITECTURE,
    FEATURE_DIM,
    RECORD_FILE,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    FashionClassifier,
)

MIN_TEST_ACCURACY = 0.91


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on uint8 images (N, 28, 28) with int labels (N,)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size])  # (B, 1, 28, 28)
        correct += int((model(x).argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random horizontal flip per image and one random shift of up to `max_shift` px per batch.

    x: (B, 1, 28, 28) in [-1, 1]; the uncovered border is background (-1).
    """
    flip = torch.rand(len(x), generator=generator) < 0.5  # (B,)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if max_shift == 0:
        return x
    s = max_shift
    dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=generator))
    padded = F.pad(x, (s, s, s, s), value=-1.0)  # (B, 1, 28 + 2s, 28 + 2s)
    return padded[:, :, s + dy : s + dy + 28, s + dx : s + dx + 28]


def train(images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
          seed: int, log=print) -> FashionClassifier:
    """Seeded training on uint8 images (N, 28, 28); returns the model in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FashionClassifier()
    x_all = to_model_range(images)  # (N, 1, 28, 28) in [-1, 1]
    steps_per_epoch = len(x_all) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for k in range(steps_per_epoch):
            index = order[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(model(augment(x_all[index], generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}")
    return model.eval()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ddgan.metrics.train_classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, type=InputPath("dir"), help="folder with the four IDX files (default: $DDGAN_DATA_DIR)")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), type=OutputDir(), help="output folder for the weights and the record")
    parser.add_argument("--epochs", type=Number(int, 1, 1000), default=8)
    parser.add_argument("--batch-size", type=Number(int, 1, 4096), default=128)
    parser.add_argument("--lr", type=Number(float, 0, 10, low_open=True), default=3e-3)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace, command: str) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    train_images, train_labels = load_fashion_mnist(data_dir, "train")
    test_images, test_labels = load_fashion_mnist(data_dir, "test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = train(train_images, train_labels, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, test_images, test_labels)
    print(f"test accuracy {test_accuracy:.4f} after {seconds:.0f} s")
    if test_accuracy < MIN_TEST_ACCURACY:
        raise SystemExit(f"test accuracy {test_accuracy:.4f} < {MIN_TEST_ACCURACY}; weights not written")
    weights = out / WEIGHTS_FILE
    tmp = weights.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    record = {
        "architecture": ARCHITECTURE,
        "feature_dim": FEATURE_DIM,
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "test_accuracy": round(test_accuracy, 4),
        "test_correct": round(test_accuracy * len(test_images)),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "command": command,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "ddgan.metrics.train_classifier", *argv])
    try:
        record = run(parse_args(argv), command)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
