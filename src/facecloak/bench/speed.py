"""Speed benchmarks: ``bench speed`` (one photo through every stage, per preset) and ``bench models`` (forward and
backward per model), on the CPU or a GPU, with the real weights or random ones of each model's true architecture.

Random weights (``--random-weights``) exist for machines without the model cache, such as a GPU machine that only
code and a few MB travel to: speed does not depend on weight values, protection does, so such a run prints and
records that its protection numbers mean nothing.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.device import (
    configure_cpu_threads,
    device_label,
    memory_peak,
    reset_memory_peak,
    select_device,
    synchronize,
)
from ..core.zoo.model import FaceModel
from .common import (
    BenchInputError,
    _ready_models,
    add_data_argument,
    add_results_argument,
    check_results_page,
    data_root,
    env_data_root,
    machine_line,
    portable_path,
    read_markdown_section,
    reports_input_errors,
    this_command,
    write_json,
    write_section,
)

SPEED_PHOTO = Path("people") / "person_02" / "img49.jpg"  # the speed benchmark's photo, inside the data folder
STAGES = ("load", "detect", "attack", "compose", "export", "report")
RANDOM_NOTE = "random weights of each model's true architecture (speed only: protection numbers are meaningless)"

_SPEED_ROW = re.compile(r"^\| (\w+) \| (\d+x\d+) \| (\d+) \| (\d+) \| \d+ \|$")


# --- models with random weights --------------------------------------------------------------------------------


def _random_like(key: str, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random tensor for one entry of a state dict, scaled so activations stay finite through a deep network."""
    if not value.is_floating_point():
        return value
    if key.endswith("running_var"):
        return torch.empty(value.shape).uniform_(0.5, 1.5, generator=generator)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(value.shape, generator=generator)
    if value.dim() >= 2:  # weights: fan-in scaling
        return torch.randn(value.shape, generator=generator) / math.sqrt(max(1, value[0].numel()))
    return torch.empty(value.shape).uniform_(0.5, 1.0, generator=generator)  # biases, scales, slopes


def random_weights_model(name: str, device: torch.device | str = "cpu", seed: int = 0) -> FaceModel:
    """Zoo model ``name`` as :func:`~facecloak.core.zoo.registry.load_model` builds it (architecture, folded batch
    norms, alignment, bfloat16 preference), with random weights instead of the cache's: nothing is read from disk.

    Each model gets its own weights (``seed`` and the name seed them); ``model.random_weights`` is True.
    """
    from ..core.zoo.manifest import load_manifest
    from ..core.zoo.model import fold_batch_norms
    from ..core.zoo.registry import converter

    spec = load_manifest()[name]
    module = converter(name)
    network = module.build_network()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    network.load_state_dict({k: _random_like(k, v, generator) for k, v in network.state_dict().items()}, strict=True)
    if getattr(module, "FOLD_BATCH_NORMS", False):
        network = fold_batch_norms(network)
    model = FaceModel(spec, network, module.ALIGNMENT, bfloat16=getattr(module, "BFLOAT16", False))
    model.random_weights = True
    return model.to(device=device)


@contextmanager
def random_weights_loader(seed: int = 0) -> Iterator[None]:
    """Inside, the zoo's loader builds every model with :func:`random_weights_model` and counts every model as
    cached: for engine classes that load their models by name (the report's evaluator)."""
    from ..core.zoo import registry

    saved = registry.load_model, registry.cache_status

    def load(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, manifest=None):
        return random_weights_model(name, device, seed).to(dtype=dtype)

    registry.load_model = load
    registry.cache_status = lambda spec: registry.CacheStatus(True, "random weights")
    try:
        yield
    finally:
        registry.load_model, registry.cache_status = saved


def load_models(names: Sequence[str], device: torch.device, random_weights: bool) -> list[FaceModel]:
    """The named models on ``device``: from the cache, or with random weights."""
    from ..core.zoo.registry import ModelNotReady, load_model

    if random_weights:
        return [random_weights_model(name, device) for name in names]
    try:
        return [load_model(name, device) for name in names]
    except ModelNotReady as err:
        raise BenchInputError(f"{err} (or pass --random-weights to time random weights)") from err


def _device(name: str) -> torch.device:
    """The device to time on (a clear error when absent), with the CPU's threads set for the host-side stages."""
    try:
        device = select_device(name)
    except ValueError as err:
        raise BenchInputError(str(err)) from err
    configure_cpu_threads()
    return device


# --- bench speed -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedRow:
    """One timed run of one photo: seconds per stage, and the device memory peak (None off CUDA)."""

    preset: str
    width: int
    height: int
    faces: int
    seconds: dict[str, float]
    peak_bytes: int | None

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    @property
    def per_face(self) -> float:
        return self.total / max(1, self.faces)

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "photo": f"{self.width}x{self.height}",
            "faces": self.faces,
            "seconds": self.seconds,
            "total": self.total,
            "per_face": self.per_face,
            "peak_gpu_mb": None if self.peak_bytes is None else self.peak_bytes / 2**20,
        }


def _resize_to_megapixels(photo: torch.Tensor, megapixels: float) -> torch.Tensor:
    """The photo resampled to about ``megapixels`` (to measure memory on 24 MP without such a file)."""
    import torch.nn.functional as F

    h, w = photo.shape[-2:]
    scale = math.sqrt(megapixels * 1e6 / (h * w))
    return F.interpolate(photo, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)


def _timed_source(photo_path: Path, megapixels: float | None, folder: Path) -> Path:
    """The file each run loads: the photo itself, or a copy resampled to ``megapixels`` (JPEG quality 95)."""
    if not megapixels:
        return photo_path
    from PIL import Image

    from ..core.image import load_image

    pixels = _resize_to_megapixels(load_image(photo_path), megapixels)[0]
    array = pixels.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    target = folder / f"{photo_path.stem}_{megapixels:g}mp.jpg"
    Image.fromarray(array).save(target, quality=95)
    return target


class _Stopwatch:
    """Seconds per stage, with the device's queue drained at each boundary (GPU work is asynchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class _Pipeline:
    """What ``facecloak protect --report`` does to one photo, stage by stage: load, detect, attack, compose,
    export, report (the engine's own classes; the report through ``ProtectionEvaluator.report``)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, out_dir: Path) -> None:
        from ..core.detect import DetectorConfig, FaceDetector
        from ..core.zoo.manifest import Roles, check_disjoint

        self.device, self.out_dir, self.args = device, out_dir, args
        self.ensemble = list(args.ensemble or Roles.load().ensemble)
        self.models = load_models(self.ensemble, device, args.random_weights)
        self.detector = FaceDetector(DetectorConfig(device=args.detect_device))
        self.evaluator = None
        if args.report:
            names = list(args.evaluators or Roles.load().evaluators)
            check_disjoint(self.ensemble, names)
            self.evaluator = self._evaluator(names)

    def _evaluator(self, names: list[str]):
        from ..core.report import ProtectionEvaluator

        if not self.args.random_weights:
            evaluator = ProtectionEvaluator(names, device=str(self.device))
            if evaluator.missing:
                raise BenchInputError(f"evaluators not ready: {', '.join(evaluator.missing)} (or --random-weights)")
            return evaluator
        with random_weights_loader():
            evaluator = ProtectionEvaluator(names, device=str(self.device))
        if not all(getattr(model, "random_weights", False) for model in evaluator.models) or evaluator.missing:
            raise BenchInputError("the report's evaluator did not take the random-weights models")
        return evaluator

    def run(self, cloak, source: Path) -> tuple[int, int, int, dict[str, float]]:
        """One photo through every stage: its width, height, faces and seconds per stage."""
        from ..core.export import ExportOptions, export_protected
        from ..core.image import open_photo, pil_to_tensor

        watch = _Stopwatch(self.device)
        with watch.stage("load"):
            photo = open_photo(source)
            clean = pil_to_tensor(photo.rgb)
        with watch.stage("detect"):
            faces = self.detector.detect(clean)[: self.args.faces]
        started = time.perf_counter()
        result = cloak(clean.to(self.device), faces)
        synchronize(self.device)
        watch.seconds["compose"] = result.seconds.get("compose", 0.0)
        watch.seconds["attack"] = time.perf_counter() - started - watch.seconds["compose"]
        with watch.stage("export"):
            options = ExportOptions(overwrite=True)
            written = export_protected(source, result.photo.cpu(), self.out_dir, options, photo=photo)
        if self.evaluator is not None:
            with watch.stage("report"):  # measured on the copy as written, as `facecloak protect --report` does
                protected = pil_to_tensor(open_photo(written).rgb)
                self.evaluator.report(clean, protected, faces, self.ensemble, export_file=written)
        seconds = {stage: watch.seconds[stage] for stage in STAGES if stage in watch.seconds}
        return clean.shape[-1], clean.shape[-2], len(faces), seconds


def speed_heading(width: int, height: int, photo_name: str, faces: int, device: str = "cpu") -> str:
    where = "" if device == "cpu" else f" on {device}"
    return (
        f"### Protecting one {width * height / 1e6:.1f} MP photo (`{photo_name}`, {faces} face(s)), per preset{where}"
    )


def stage_shares(rows: Sequence[SpeedRow]) -> str:
    """Per preset, each stage's share of the total time over that preset's runs."""
    lines = []
    for name in dict.fromkeys(row.preset for row in rows):
        mine = [row for row in rows if row.preset == name]
        total = sum(row.total for row in mine) or 1.0
        parts = [
            f"{stage} {100 * sum(row.seconds.get(stage, 0.0) for row in mine) / total:.0f}%"
            for stage in STAGES
            if any(stage in row.seconds for row in mine)
        ]
        lines.append(f"{name}: {', '.join(parts)}")
    return "; ".join(lines)


def speed_table(rows: Sequence[SpeedRow]) -> list[str]:
    stages = [stage for stage in STAGES if any(stage in row.seconds for row in rows)]
    gpu = any(row.peak_bytes is not None for row in rows)
    header = ["preset", "photo", "faces", *(f"{s} (s)" for s in stages), "total (s)", "s per face"]
    header += ["GPU peak (MB)"] if gpu else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.preset, f"{row.width}x{row.height}", str(row.faces)]
        cells += [f"{row.seconds.get(s, 0.0):.2f}" for s in stages]
        cells += [f"{row.total:.2f}", f"{row.per_face:.2f}"]
        cells += [f"{(row.peak_bytes or 0) / 2**20:.0f}"] if gpu else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _speed_config(name: str, assignments: Sequence[str], device: torch.device):
    from ..core.attack import parse_assignments, preset, with_overrides

    try:
        return with_overrides(preset(name, gpu=device.type == "cuda"), parse_assignments(assignments))
    except ValueError as err:
        raise BenchInputError(f"--set: {err}") from err


@reports_input_errors
def run_speed_benchmark(args: argparse.Namespace) -> int:
    """Seconds per face to protect one real photo per preset, stage by stage, detection and report included."""
    from ..core.attack import Cloak

    if args.repeats < 1:
        raise BenchInputError("--repeats must be at least 1")
    photo_path = args.photo or data_root(args.data) / SPEED_PHOTO
    if not photo_path.is_file():
        raise BenchInputError(f"{photo_path} not found (pass --photo, or --data DIR holding {SPEED_PHOTO})")
    check_results_page(args.results)
    device = _device(args.device)
    configs = {name: _speed_config(name, args.set, device) for name in args.presets}
    rows: list[SpeedRow] = []
    with tempfile.TemporaryDirectory(prefix="facecloak-speed-") as folder:
        source = _timed_source(photo_path, args.megapixels, Path(folder))
        pipeline = _Pipeline(args, device, Path(folder) / "out")
        print(f"device: {device_label(device)}" + (f"; {RANDOM_NOTE}" if args.random_weights else ""), flush=True)
        for name, config in configs.items():
            cloak = Cloak(pipeline.models, config)
            for run in range(args.repeats + 1):  # the first run warms caches (and the GPU's kernels): not counted
                # every counted run starts cold: a remembered face would warm-start and halve the steps
                # (the album case, measured by 'bench album')
                cloak.memory.clear()
                reset_memory_peak(device)
                width, height, faces, seconds = pipeline.run(cloak, source)
                if run == 0:
                    continue
                row = SpeedRow(name, width, height, faces, seconds, memory_peak(device))
                rows.append(row)
                stages = ", ".join(f"{stage} {value:.2f} s" for stage, value in seconds.items())
                print(f"{name}: {width}x{height}, {faces} face(s): {stages}; {row.per_face:.2f} s per face", flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_rss:.0f} MB")
    root = args.data or env_data_root()
    machine = machine_line() + ("" if device.type == "cpu" else f"; {device_label(device)}")
    lines = [
        speed_heading(rows[0].width, rows[0].height, photo_path.name, rows[0].faces, device.type),
        "",
        f"Command: `{this_command(root)}` ({machine}); photo `{portable_path(photo_path, root)}`; ensemble "
        f"{', '.join(pipeline.ensemble)}"
        + (f"; {RANDOM_NOTE}" if args.random_weights else "")
        + f"; detection{' and report' if args.report else ''} included, every counted run cold (no warm start "
        "from an earlier photo); steps per face: "
        + ", ".join(f"{name} {config.steps}" for name, config in configs.items())
        + ". "
        f"Peak RSS of the whole run: {peak_rss:.0f} MB.",
        "",
        *speed_table(rows),
        "",
        f"Share of the time per stage: {stage_shares(rows)}.",
    ]
    print("\n" + "\n".join(lines))
    if args.output:
        summary = {"device": device_label(device), "random_weights": args.random_weights}
        write_json(args.output, summary | {"rows": [row.to_dict() for row in rows]})
    key = "speed" + (f"-{args.megapixels:g}mp" if args.megapixels else "")
    key += "" if device.type == "cpu" else f"-{device.type}"
    write_section(args.results, key + ("-random" if args.random_weights else ""), "\n".join(lines))
    return 0


# --- bench models ----------------------------------------------------------------------------------------------


def model_speed_table(
    rows: list[tuple[str, str, float, float]], repeats: int, previous: str = "", device: str = "", note: str = ""
) -> str:
    """The model-speed section. ``previous`` is the section already on the page when only some models were
    measured: the other models' rows are kept and both commands named. ``device``: the device's name when it is
    not the CPU; ``note``: what else the command line should say (random weights)."""
    details = "".join(f"; {text}" for text in (device, note) if text)
    command = f"`{this_command(None)}` ({machine_line()}{details}); median of {repeats} runs"
    header = f"Command: {command}."
    measured = {row[0]: row for row in rows}
    kept = {}
    for line in previous.splitlines():
        if line.startswith("Command:"):
            header = f"{line.rstrip('.')}; rows of {', '.join(measured)} re-measured by {command}."
        elif match := _SPEED_ROW.match(line):
            name, size, one, eight = match.groups()
            kept[name] = (name, size, float(one), float(eight))
    merged = [measured[name] if name in measured else kept[name] for name in _zoo_order([*kept, *measured])]
    lines = [
        f"### Model speed: forward + backward on {device or 'the CPU'}",
        "",
        header,
        "",
        "| model | input | 1 face (ms) | batch of 8 (ms) | per face in batch (ms) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s} | {a:.0f} | {b:.0f} | {b / 8:.0f} |" for n, s, a, b in merged]
    return "\n".join(lines)


def _zoo_order(names: list[str]) -> list[str]:
    from ..core.zoo.manifest import load_manifest

    order = {name: i for i, name in enumerate(load_manifest())}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def _time_it(fn: Callable[[], None], repeats: int, device: torch.device | None = None) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, the device's queue drained around each."""
    device = device or torch.device("cpu")
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@reports_input_errors
def run_model_speed_benchmark(args: argparse.Namespace) -> int:
    check_results_page(args.results)
    device = _device(args.device)
    if args.random_weights:
        from ..core.zoo.manifest import load_manifest

        names = args.models or list(load_manifest())
    else:
        names = _ready_models(args.models)
    rows = []
    for name in names:
        (model,) = load_models([name], device, args.random_weights)
        h, w = model.input_size
        timings = []
        for batch in (1, 8):
            crops = torch.rand(batch, 3, h, w, device=device, requires_grad=True)

            def step(crops=crops, model=model):
                crops.grad = None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bfloat16):
                    embeddings = model(crops)
                embeddings.float().sum().backward()

            timings.append(_time_it(step, args.repeats, device))
        rows.append((name, f"{w}x{h}", timings[0] * 1000, timings[1] * 1000))
        print(f"{name}: forward+backward {timings[0] * 1000:.0f} ms (1 face), {timings[1] * 1000:.0f} ms (8 faces)")
    key = "model-speed" + ("" if device.type == "cpu" else f"-{device.type}")
    key += ("-bf16" if args.bfloat16 else "") + ("-random" if args.random_weights else "")
    previous = read_markdown_section(args.results, key) if args.models else ""
    label = "" if device.type == "cpu" else device_label(device)
    notes = [
        note for note, given in (("bfloat16 autocast", args.bfloat16), (RANDOM_NOTE, args.random_weights)) if given
    ]
    table = model_speed_table(rows, args.repeats, previous, label, "; ".join(notes))
    print("\n" + table)
    write_section(args.results, key, table)
    if args.output:
        write_json(args.output, rows)
    return 0


# --- the command line ------------------------------------------------------------------------------------------

_DEVICE_HELP = "auto takes CUDA, then Apple MPS, then the CPU (default: %(default)s)"


def add_speed_arguments(speed: argparse.ArgumentParser) -> None:
    add_data_argument(
        speed,
        f"folder holding {SPEED_PHOTO.as_posix()}, the photo timed unless --photo is given (default: $FACECLOAK_DATA)",
    )
    speed.add_argument(
        "--photo", type=Path, default=None, help=f"photo to time (default: {SPEED_PHOTO.as_posix()} of the data folder)"
    )
    speed.add_argument(
        "--presets", nargs="+", default=["low", "mid", "high"], help="presets to time (default: low mid high)"
    )
    speed.add_argument("--faces", type=int, default=1, help="protect at most this many faces (default: 1)")
    speed.add_argument("--repeats", type=int, default=1, help="timed runs per preset (default: 1)")
    speed.add_argument(
        "--megapixels", type=float, default=None, help="resample the photo to this size first (default: as it is)"
    )
    speed.add_argument("--ensemble", nargs="+", default=None, help="attack models (default: the manifest's)")
    speed.add_argument("--evaluators", nargs="+", default=None, help="report models (default: the manifest's)")
    speed.add_argument(
        "--no-report", dest="report", action="store_false", help="leave the report stage out (default: timed)"
    )
    speed.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help=_DEVICE_HELP)
    speed.add_argument(
        "--detect-device",
        default="cpu",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where faces are detected (default: cpu, as the app and 'facecloak protect' do)",
    )
    speed.add_argument("--random-weights", action="store_true", help=f"time {RANDOM_NOTE}; no model cache needed")
    speed.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="override an attack knob for every preset, e.g. --set steps=2 (repeatable)",
    )
    speed.add_argument("--output", type=Path, default=None, help="write the rows as JSON here (default: none)")
    add_results_argument(speed)


def add_model_speed_arguments(models: argparse.ArgumentParser) -> None:
    models.add_argument("--models", nargs="*", help="models to time (default: every ready model)")
    models.add_argument("--repeats", type=int, default=5, help="timed runs per model (default: 5)")
    models.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help=_DEVICE_HELP)
    models.add_argument("--random-weights", action="store_true", help=f"time {RANDOM_NOTE}; no model cache needed")
    models.add_argument(
        "--bfloat16", action="store_true", help="run the models under bfloat16 autocast, as the attack does on a GPU"
    )
    models.add_argument("--output", type=Path, default=None, help="write the results as JSON here (default: none)")
    add_results_argument(models)
