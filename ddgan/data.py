"""Fashion-MNIST from its four IDX files, validated, held as one tensor; random-index batches.

The data set is tiny (70,000 images of 28x28 uint8, 55 MB), so a whole split lives
in one tensor on the training device and a batch is `x[randint(N, (B,))]`: no
DataLoader, no worker processes, no per-sample Python.

Where the files come from (`resolve_data_dir`): the flag / `data.dir` value, else
`$DDGAN_DATA_DIR`, else (only with `data.download=true`) torchvision's download into
`~/.cache/ddgan/data`. Either way the files are read by `read_idx` below; torchvision's
in-memory copy is never used, and a local directory never goes through torchvision
(the offline copy's image archives differ from the official bytes, so its MD5 check fails).

IDX format: big-endian header `magic, dim_1 .. dim_n` (int32 each) then the uint8 data.
Magic 2051 = 0x00000803 (uint8, 3 dims: images), 2049 = 0x00000801 (uint8, 1 dim: labels).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ddgan.errors import ConfigError, DataError

DEFAULT_DATA_ENV = "DDGAN_DATA_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/ddgan/data")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLITS = {  # split -> (file prefix, expected count)
    "train": ("train", 60_000),
    "test": ("t10k", 10_000),
}
_FIX = "re-copy it or verify with `sha256sum -c SHA256SUMS` in its directory"
# The largest Fashion-MNIST file (train images) is 47,040,016 bytes uncompressed: a file, or a
# gzip stream, beyond this ceiling is refused before it fills memory.
MAX_IDX_BYTES = 64 * 2**20


def resolve_data_dir(flag: str | os.PathLike | None, download: bool = False) -> Path:
    """Directory holding the four IDX files: `flag`, else $DDGAN_DATA_DIR, else a download.

    A given directory that already holds the files is used as is, even with `download`;
    torchvision is only asked when there are no files to read.
    """
    given = flag if flag not in (None, "") else os.environ.get(DEFAULT_DATA_ENV) or None
    if given is not None:
        data_dir = Path(given).expanduser()
        if not download or _has_all_files(data_dir):
            return data_dir
        return _download(data_dir)
    if download:
        return _download(DEFAULT_CACHE_DIR.expanduser())
    raise DataError(
        "no Fashion-MNIST directory given: pass --set data.dir=DIR (or --data-dir DIR), "
        f"or set {DEFAULT_DATA_ENV}=DIR (e.g. ../shared/data/fashion-mnist), "
        "or use --set data.download=true on a machine with internet"
    )


def _file_stems(split: str) -> tuple[str, str]:
    prefix = SPLITS[split][0]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(data_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def _has_all_files(data_dir: Path) -> bool:
    stems = [stem for split in SPLITS for stem in _file_stems(split)]
    return all(_find_file(data_dir, stem) is not None for stem in stems)


def _download(root: Path) -> Path:
    """torchvision's FashionMNIST download into `root`; returns the folder of its raw IDX files."""
    raw_dir = root / "FashionMNIST" / "raw"
    if _has_all_files(raw_dir):
        return raw_dir
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(root=str(root), train=True, download=True)
    except Exception as err:  # URLError, RuntimeError (mirrors / MD5), OSError (disk)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"downloading Fashion-MNIST into {root} failed ({reason}); on a machine without "
            f"internet pass --set data.dir=DIR or set {DEFAULT_DATA_ENV} to a copy of the four IDX files"
        ) from None
    return raw_dir


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_IDX_BYTES:
            raise DataError(f"{path} is {size} bytes, larger than any Fashion-MNIST IDX file; {_FIX}")
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check the path and permissions") from None
    if not (path.suffix == ".gz" or raw[:2] == b"\x1f\x8b"):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(MAX_IDX_BYTES + 1)  # a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({err}); {_FIX}") from None
    if len(data) > MAX_IDX_BYTES:
        raise DataError(f"{path} decompresses to more than {MAX_IDX_BYTES} bytes, larger than any "
                        f"Fashion-MNIST IDX file; {_FIX}")
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (`.gz` or uncompressed) -> uint8 array: images (N, 28, 28) or labels (N,).

    Checks the magic number, the header against the byte length, 28x28 images and labels
    in 0..9. Every failure is a `DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; copy the four Fashion-MNIST IDX files into {path.parent}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes, no IDX header); {_FIX}")
    magic = int(np.frombuffer(data, dtype=">u4", count=1)[0])
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise DataError(
            f"{path} is not a Fashion-MNIST IDX file (magic {magic}, expected {IMAGE_MAGIC} for "
            f"images or {LABEL_MAGIC} for labels); {_FIX}"
        )
    ndim = magic & 0xFF  # 3 for images, 1 for labels
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise DataError(f"{path} is truncated ({len(data)} bytes, header needs {header_len}); {_FIX}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if magic == IMAGE_MAGIC and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28; {_FIX}")
    expected = header_len + math.prod(dims)  # Python ints: no overflow on a garbage header
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path} {problem}: {len(data)} bytes where its header {dims} implies {expected}; {_FIX}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    if magic == LABEL_MAGIC and array.size and int(array.max()) >= NUM_CLASSES:
        raise DataError(f"{path} holds label {int(array.max())}, expected 0..9; {_FIX}")
    return array


def _read_role(data_dir: Path, stem: str, magic: int) -> np.ndarray:
    path = _find_file(data_dir, stem)
    if path is None:
        raise DataError(
            f"{data_dir / stem}.gz not found (nor uncompressed {stem}); point data.dir / "
            f"{DEFAULT_DATA_ENV} at a folder with the four Fashion-MNIST IDX files, "
            "e.g. ../shared/data/fashion-mnist"
        )
    array = read_idx(path)
    want_ndim = 3 if magic == IMAGE_MAGIC else 1
    if array.ndim != want_ndim:
        kind = "images" if magic == IMAGE_MAGIC else "labels"
        raise DataError(f"{path} does not hold {kind} (IDX with {array.ndim} dims); {_FIX}")
    return array


def load_fashion_mnist(
    data_dir: str | os.PathLike, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split -> (images uint8 (N, 28, 28), labels int64 (N,)), N = 60,000 or 10,000."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        problem = "is a dangling symlink or a symlink loop" if data_dir.is_symlink() else "does not exist"
        raise DataError(
            f"data directory {data_dir} {problem}; point data.dir / {DEFAULT_DATA_ENV} at "
            "the folder with the four Fashion-MNIST IDX files, e.g. ../shared/data/fashion-mnist"
        )
    image_stem, label_stem = _file_stems(split)
    images = _read_role(data_dir, image_stem, IMAGE_MAGIC)  # (N, 28, 28)
    labels = _read_role(data_dir, label_stem, LABEL_MAGIC)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{_find_file(data_dir, image_stem)} holds {len(images)} images but "
            f"{_find_file(data_dir, label_stem)} holds {len(labels)} labels; {_FIX}"
        )
    expected = SPLITS[split][1]
    if len(images) != expected:
        raise DataError(
            f"{_find_file(data_dir, image_stem)} and {label_stem} hold {len(images)} items, "
            f"the {split} split has {expected}; {_FIX}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) in 0..255 -> float32 (N, 1, 28, 28) in [-1, 1]: x / 127.5 - 1."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 images, got {images.dtype}")
    x = images.unsqueeze(1) if images.dim() == 3 else images  # (N, 1, 28, 28)
    return x.to(torch.float32) / 127.5 - 1.0


def load_training_tensor(data_cfg, device: torch.device | str) -> torch.Tensor:
    """`DataConfig` -> float32 (N, 1, 28, 28) in [-1, 1] on `device`; `subset` keeps the first N."""
    data_dir = resolve_data_dir(data_cfg.dir, download=data_cfg.download)
    images, _ = load_fashion_mnist(data_dir, data_cfg.split)  # (N, 28, 28) uint8
    if data_cfg.subset is not None:
        if data_cfg.subset > len(images):
            raise ConfigError(
                f"config: data.subset={data_cfg.subset} exceeds the {len(images)} images of the "
                f"{data_cfg.split} split"
            )
        images = images[: data_cfg.subset]
    # Move as uint8 (4x fewer bytes), scale on the device.
    return to_model_range(images.to(device)).contiguous()


class RandomBatches:
    """Infinite iterator of (B, 1, 28, 28) batches drawn by random index (with replacement).

    `x` stays where it is (the training device); the indices come from a `torch.Generator`
    on that device, so nothing crosses the bus per step. `state_dict()` holds the generator
    state: after `load_state_dict` the batch sequence continues exactly.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int = 0):
        if x.dim() != 4 or len(x) == 0:
            raise ValueError(f"RandomBatches needs a non-empty (N, C, H, W) tensor, got {tuple(x.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.batch_size, self.seed = x, int(batch_size), int(seed)
        self.generator = torch.Generator(device=x.device)
        self.generator.manual_seed(self.seed)

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> torch.Tensor:
        index = torch.randint(
            len(self.x), (self.batch_size,), generator=self.generator, device=self.x.device
        )  # (B,)
        return self.x[index]  # (B, 1, 28, 28)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))
        self.seed = int(state.get("seed", self.seed))
