"""Build the carry folder that lets `benchmarks/gpu_check.sh` run on a bare GPU machine (see tools/README.md).

That machine (an H200 reached through a remote-run service) has Python 3.12 with torch,
numpy, scipy, pandas, matplotlib, pyarrow, aiohttp and the like, but not Ray, MLflow,
Optuna, pydantic or clean-fid; it reaches no package index, it does not see
`../shared/data`, and one call carries at most 64 MiB of working tree. This script packs
what the check needs into one archive, `DIR/bundle.tar.xz` (default DIR `.gpu/`, ignored by
git), that `tools/gpu_check_bundled.sh` unpacks before it runs the check:

- `site/`: every distribution our dependencies need (the requirement closure of ray[tune],
  optuna, mlflow, clean-fid, pydantic, as installed here) that the device image lacks
  (`DEVICE_HAS`, from the device library's package list), at the versions installed here,
  for the target Python and manylinux x86_64; less the MLflow server's own dependencies
  (`SERVER_ONLY`: a study logs to SQLite and starts no server) and the folders in `DROP`
  that a Tune study never loads (MLflow's web UI; Ray's Java jar, dashboard UI, RLlib,
  Serve, LLM and C++ APIs); Ray's three native binaries lose their symbol tables.
- `data/`: the Fashion-MNIST train split (the only split the check reads), validated by
  `ddgan.data`, as uncompressed IDX (xz packs it tighter than gzip).
- `inception/architecture.pt`: clean-fid's Inception network (the TorchScript found as the
  study finds it) with every weight set to zero, ~90 MB that compress to a few kB.
  `python -m tools.gpu_bundle timing-inception SRC DST` fills it on the device with
  random He-scaled weights: the same graph and cost, a FOR-TIMING-ONLY file whose name says
  so and whose sha256 is not the real one, so no FID it computes can pass for Inception FID.
  (The real 87 MB weights do not fit in a call next to the rest.)
- `MANIFEST.txt`: versions, sizes, the device command.

    python -m tools.gpu_bundle --out .gpu            # needs pip's index (PyPI or a mirror)
    python -m tools.gpu_bundle --check .gpu          # the size check alone
    python -m tools.gpu_bundle compare-timing        # real vs timing-only Inception, ms/image

Then, through the remote-run service: run(command="PYTHON=python3 bash tools/gpu_check_bundled.sh $OUT",
carry=[".gpu"], timeout_s=600).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the working tree one call carries


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


ROOTS = [("ray", {"tune"}), ("optuna", set()), ("mlflow", set()), ("clean-fid", set()),
         ("pydantic", set()), ("pyyaml", set()), ("safetensors", set())]
# Distributions the device image already holds (device library, KINDS.md, read 2026-11-17),
# canonical names; the bundle leaves them out. opencv-python: the image has the headless build
# of the same `cv2`.
DEVICE_HAS = _names("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
opencv-python
""")
# The MLflow server's own dependencies (its web UI, auth, job queue, model serving): a study logs
# to a SQLite store and never starts the server, so the check runs without them.
SERVER_ONLY = _names("""
flask flask-cors gunicorn graphene graphql-core graphql-relay huey docker skops prettytable wcwidth blinker
itsdangerous
""")
DROP = ["mlflow/server/js",  # the MLflow UI's JavaScript build
        "ray/jars", "ray/dashboard/client/build",
        "ray/rllib", "ray/serve", "ray/llm", "ray/cpp",
        "ray/_private/runtime_env/agent/thirdparty_files"]  # Ray's own aiohttp & co.: the image has them
RAY_BINARIES = ["ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
TIMING_NAME = "inception-architecture-RANDOM-WEIGHTS-FOR-TIMING-ONLY.pt"


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def requirement_closure(roots=ROOTS) -> dict[str, str]:
    """{canonical name: installed version} of `roots` and everything they require here."""
    from packaging.requirements import Requirement

    seen: dict[str, set[str]] = {}
    stack = [(name, set(extras)) for name, extras in roots]
    while stack:
        name, extras = stack.pop()
        key = canonical(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: build the bundle from the project's environment "
                             "(pip install -e .)") from None
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ["", *sorted(extras)]):
                stack.append((req.name, set(req.extras)))
    return {key: md.version(key) for key in seen}


def bundled(closure: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in sorted(closure.items())
            if name not in DEVICE_HAS and name not in SERVER_ONLY}


def install_site(pins: dict[str, str], site: Path, python_version: str) -> None:
    """Unpack the pinned wheels for the target interpreter into `site` (pip, no dependencies)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--only-binary=:all:",
           "--target", str(site), "--python-version", python_version, "--implementation", "cp", *platforms,
           *(f"{name}=={version}" for name, version in pins.items())]
    subprocess.run(cmd, check=True)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts name this machine's interpreter


def slim(site: Path) -> None:
    for rel in DROP:
        shutil.rmtree(site / rel, ignore_errors=True)
    strip = shutil.which("strip")
    for rel in RAY_BINARIES:
        if strip and (site / rel).is_file():
            subprocess.run([strip, "--strip-unneeded", str(site / rel)], check=True)


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def copy_data(data_dir: Path, out: Path) -> None:
    """The train split's two IDX files (the only split the check reads), validated, written uncompressed."""
    from ddgan.data import _file_stems, _find_file, load_fashion_mnist, read_idx

    out.mkdir(parents=True, exist_ok=True)
    load_fashion_mnist(data_dir, "train")  # checks counts and pairing
    for stem in _file_stems("train"):
        write_idx(out / stem, read_idx(_find_file(data_dir, stem)))


def zeroed_inception(weights: str | None, out: Path) -> str:
    """The Inception TorchScript with every parameter and buffer zeroed; returns where it came from."""
    from ddgan.metrics.inception import _jit_load, resolve_weights

    found, _ = resolve_weights(weights, "cpu", allow_download=False)
    module = _jit_load(found.path)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.zero_()
    _jit_save(module, out)
    return f"{found.path.name} (sha256 {found.sha256[:12]}, {found.source})"


def timing_inception(src: Path, dst: Path, seed: int = 0) -> Path:
    """Fill a zeroed Inception with random He-scaled weights: same graph and cost, not Inception.

    Convolution and linear weights ~ N(0, 2 / fan_in); 1-d scales and variances (`weight`,
    `gamma`, `running_var`, and `var` as fid-helper names its folded batch norms) 1; biases
    and means (`bias`, `beta`, `mean`) 0: activations stay O(1) through the network, so timings
    see ordinary numbers. A probe image must give finite, non-constant features, else UsageError.
    """
    from ddgan.errors import UsageError
    from ddgan.metrics.inception import INPUT_SIZE, _jit_load, load_torchscript

    module = _jit_load(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("var", "weight", "gamma", "scale")):
                tensor.fill_(1.0)
            else:
                tensor.zero_()
    dst = dst if dst.name == TIMING_NAME else dst / TIMING_NAME
    dst.parent.mkdir(parents=True, exist_ok=True)
    _jit_save(module, dst)
    probe = torch.rand((2, 3, INPUT_SIZE, INPUT_SIZE), generator=gen) * 255
    features = load_torchscript(dst)(probe)
    if not torch.isfinite(features).all() or torch.allclose(features[0], features[1]):
        dst.unlink()
        raise UsageError(f"random weights for {src} give non-finite or constant features: "
                         "its parameter names are not ones timing_inception knows")
    return dst


def _jit_save(module: torch.jit.ScriptModule, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is "deprecated"; the weights format is TorchScript
        torch.jit.save(module, str(path))


def tracked_bytes(repo: Path) -> int:
    """Bytes of the working tree the device tool sends besides carried paths (tracked + untracked, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((repo / f.decode()).stat().st_size for f in files if f and (repo / f.decode()).is_file())


def check_size(bundle_dir: Path, repo: Path, limit: int = CARRY_LIMIT) -> tuple[int, int]:
    """(bundle bytes, working-tree bytes); SystemExit when together they exceed what one call carries."""
    carried = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
    tree = tracked_bytes(repo)
    if carried + tree > limit:
        raise SystemExit(f"{bundle_dir} ({carried / 2**20:.1f} MiB) + working tree ({tree / 2**20:.1f} MiB) "
                         f"exceed the device tool's {limit / 2**20:.0f} MiB per call")
    return carried, tree


def build(out: Path, data_dir: Path, python_version: str, weights: str | None) -> None:
    repo = Path(__file__).resolve().parents[1]
    pins = bundled(requirement_closure())
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        print(f"installing {len(pins)} distributions for CPython {python_version} ...", flush=True)
        install_site(pins, stage / "site", python_version)
        slim(stage / "site")
        copy_data(data_dir, stage / "data")
        (stage / "inception").mkdir()
        source = zeroed_inception(weights, stage / "inception" / "architecture.pt")
        out.mkdir(parents=True, exist_ok=True)
        archive = out / "bundle.tar.xz"
        print(f"compressing into {archive} ...", flush=True)
        with tarfile.open(archive, "w:xz", preset=9) as tar:
            for part in ("site", "data", "inception"):
                tar.add(stage / part, arcname=part)
    manifest = [
        "# GPU bundle for benchmarks/gpu_check.sh (built by python -m tools.gpu_bundle)",
        f"target: CPython {python_version}, manylinux x86_64; built with {sys.executable}",
        f"data: {data_dir} (train split, uncompressed IDX)",
        f"inception: architecture of {source}, weights zeroed; filled with random weights on the device "
        f"({TIMING_NAME}): timings only",
        f"left out: the MLflow server's dependencies ({', '.join(sorted(SERVER_ONLY))}); "
        f"the folders {', '.join(DROP)}; stripped {', '.join(RAY_BINARIES)}",
        "distributions:", *(f"  {name}=={version}" for name, version in pins.items()),
    ]
    (out / "MANIFEST.txt").write_text("\n".join(manifest) + "\n")
    carried, tree = check_size(out, repo)
    print(f"{out}: {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB "
          f"(device limit {CARRY_LIMIT // 2**20} MiB per call)")


def compare_timing(weights: str | None, images: int, repeats: int, device: str) -> str:
    """Markdown: ms/image of the real Inception and of its timing-only copy, interleaved, medians."""
    from benchmarks.common import header, markdown_table, timed
    from ddgan.metrics.inception import load_torchscript, resolve_weights

    found, real = resolve_weights(weights, device, allow_download=False)
    with tempfile.TemporaryDirectory() as tmp:
        zeroed_inception(str(found.path), Path(tmp) / "zeroed.pt")
        timing = load_torchscript(timing_inception(Path(tmp) / "zeroed.pt", Path(tmp)), device)
    x = torch.rand((images, 3, 299, 299), generator=torch.Generator().manual_seed(0)) * 255
    nets = {f"{found.path.name} (sha256 {found.sha256[:12]})": real, TIMING_NAME: timing}
    for net in nets.values():  # TorchScript's profiling runs specialise on the input shape: warm on x itself
        net(x), net(x)
    seconds = {name: [] for name in nets}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        for name, net in nets.items():
            seconds[name].append(timed(lambda net=net: net(x), torch.device(device), repeats=1, warmup=0))
    rows = [{"weights": name, "images": images, "ms/image": 1000 * sorted(s)[len(s) // 2] / images}
            for name, s in seconds.items()]
    ratio = rows[1]["ms/image"] / rows[0]["ms/image"]
    return "\n".join([header("Inception: real weights vs the bundle's timing-only weights", device),
                      markdown_table(rows, ["weights", "images", "ms/image"]), "",
                      f"timing-only / real: {ratio:.3f}", ""])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare-timing"]:  # here: does the timing-only network cost what the real one does?
        p = argparse.ArgumentParser(prog="gpu_bundle compare-timing")
        p.add_argument("--fid-weights", default=None)
        p.add_argument("--images", type=int, default=32)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        args = p.parse_args(argv[1:])
        print(compare_timing(args.fid_weights, args.images, args.repeats, args.device))
        return
    if argv[:1] == ["timing-inception"]:  # on the device, called by gpu_check_bundled.sh
        p = argparse.ArgumentParser(prog="gpu_bundle timing-inception")
        p.add_argument("src", type=Path)
        p.add_argument("dst", type=Path, help="directory (or file named " + TIMING_NAME + ")")
        args = p.parse_args(argv[1:])
        print(timing_inception(args.src, args.dst))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX folder (else $DDGAN_DATA_DIR)")
    p.add_argument("--python-version", default="3.12", help="the device's Python (default 3.12)")
    p.add_argument("--fid-weights", default=None, help="Inception TorchScript to copy the architecture from")
    p.add_argument("--check", type=Path, default=None, metavar="DIR", help="only check DIR's size against the limit")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if args.check is not None:
        carried, tree = check_size(args.check, repo)
        print(f"{args.check}: {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB: fits")
        return
    from ddgan.data import resolve_data_dir

    build(args.out, resolve_data_dir(args.data_dir), args.python_version, args.fid_weights)


if __name__ == "__main__":
    main()
