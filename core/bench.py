"""Benchmarks behind ``facecloak bench``: they print numbers and write them to docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .device import configure_cpu_threads
from .files import replace_atomically

BENCHMARKS_MD = Path("docs/BENCHMARKS.md")


_SPEED_ROW = re.compile(r"^\| (\w+) \| (\d+x\d+) \| (\d+) \| (\d+) \| \d+ \|$")


def model_speed_table(rows: list[tuple[str, str, float, float]], repeats: int, subset: bool) -> str:
    """The model-speed section; a run on some models (``subset``) keeps the other models' rows already there and
    names both commands."""
    command = f"`facecloak {' '.join(sys.argv[1:])}` ({machine_line()}); median of {repeats} runs"
    header = f"Command: {command}."
    measured = {row[0]: row for row in rows}
    old = read_markdown_section(BENCHMARKS_MD, "model-speed") if subset else ""
    kept = {}
    for line in old.splitlines():
        if line.startswith("Command:"):
            header = f"{line.rstrip('.')}; rows of {', '.join(measured)} re-measured by {command}."
        elif match := _SPEED_ROW.match(line):
            name, size, one, eight = match.groups()
            kept[name] = (name, size, float(one), float(eight))
    merged = [measured[name] if name in measured else kept[name] for name in _zoo_order([*kept, *measured])]
    lines = [
        "## Model speed: forward + backward on the CPU",
        "",
        header,
        "",
        "| model | input | 1 face (ms) | batch of 8 (ms) | per face in batch (ms) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s} | {a:.0f} | {b:.0f} | {b / 8:.0f} |" for n, s, a, b in merged]
    return "\n".join(lines)


def _zoo_order(names: list[str]) -> list[str]:
    from .zoo.manifest import load_manifest

    order = {name: i for i, name in enumerate(load_manifest())}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def _section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def read_markdown_section(path: Path, key: str) -> str:
    """The text between ``<!-- key:start -->`` and ``<!-- key:end -->``, or "" when there is none."""
    start, end = _section_markers(key)
    text = path.read_text() if path.is_file() else ""
    if start not in text or end not in text:
        return ""
    return text.split(start, 1)[1].split(end, 1)[0]


@contextmanager
def _exclusive(path: Path):
    """Hold an advisory lock next to ``path`` (POSIX), so two benchmarks ending together keep both sections."""
    try:
        import fcntl
    except ImportError:  # Windows: benchmarks there run one at a time
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_markdown_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    start, end = _section_markers(key)
    block = f"{start}\n{body.rstrip()}\n{end}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        text = path.read_text() if path.is_file() else "# FaceCloak benchmarks\n"
        if start in text and end in text:
            before, rest = text.split(start, 1)
            _, after = rest.split(end, 1)
            text = before + block + after
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        # whole-file replace: a benchmark killed mid-write must not leave a truncated BENCHMARKS.md
        replace_atomically(path, lambda tmp: tmp.write_text(text))


def machine_line(threads: bool = True) -> str:
    """``threads=False`` for tables whose numbers do not depend on the thread count and may be re-rendered by
    another process (the LFW table, rebuilt from the manifest)."""
    cpu = platform.processor() or platform.machine()
    line = f"{cpu}, torch {torch.__version__}"
    return f"{line}, {torch.get_num_threads()} thread(s)" if threads else line


def _ready_models(names: list[str] | None) -> list[str]:
    from .zoo.manifest import load_manifest
    from .zoo.registry import cache_status

    manifest = load_manifest()
    chosen = names or list(manifest)
    ready = [n for n in chosen if cache_status(manifest[n]).ready]
    for name in sorted(set(chosen) - set(ready)):
        print(f"skipping {name}: {cache_status(manifest[name]).message}", file=sys.stderr)
    return ready


def run_lfw_benchmark(args: argparse.Namespace) -> int:
    from .detect import FaceDetector
    from .verification import build_pair_set, evaluate_model
    from .zoo.manifest import load_manifest, manifest_path
    from .zoo.registry import load_model

    lfw_dir, pairs_file = args.data / "lfw", args.data / "lfw_protocol" / "pairs.txt"
    if not lfw_dir.is_dir() or not pairs_file.is_file():
        print(f"LFW not found under {args.data} (expected lfw/ and lfw_protocol/pairs.txt)", file=sys.stderr)
        return 2
    configure_cpu_threads()
    names = _ready_models(args.models)
    if not names:
        print("no model is ready: run 'facecloak models --build'", file=sys.stderr)
        return 2
    command = "facecloak " + " ".join(sys.argv[1:])
    t0 = time.perf_counter()
    pair_set = build_pair_set(lfw_dir, pairs_file, FaceDetector(), args.pairs, args.impostors)
    print(
        f"{len(pair_set.photos)} photos with a face, {len(pair_set.same)} same-person pairs, "
        f"{len(pair_set.different)} different-person pairs ({time.perf_counter() - t0:.0f} s detection)",
        flush=True,
    )
    manifest = load_manifest()
    results = {}
    for name in names:
        t1 = time.perf_counter()
        result = evaluate_model(load_model(name), pair_set)
        results[name] = result
        spec = manifest[name]
        print(
            f"{name}: accuracy {result.accuracy * 100:.2f}% (reference {_claimed(spec)}), "
            f"AUC {result.auc:.4f}, thr@FAR1e-2 {result.threshold_far_1e2:.3f}, thr@FAR1e-3 "
            f"{result.threshold_far_1e3:.3f}, TAR@FAR1e-3 {result.tar_far_1e3 * 100:.1f}% "
            f"({time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    if args.output:
        args.output.write_text(json.dumps({n: r.to_dict() for n, r in results.items()}, indent=2))
    if args.write_manifest:
        store_verification({n: r.to_dict() for n, r in results.items()}, command)
        print(f"stored in {manifest_path()}")
    table = lfw_table(load_manifest())
    print("\n" + table)
    update_markdown_section(BENCHMARKS_MD, "lfw", table)
    return 0


def store_verification(results: dict[str, dict], command: str) -> None:
    from .zoo.manifest import manifest_path

    path = manifest_path()
    raw = json.loads(path.read_text())
    for entry in raw["models"]:
        if entry["name"] in results:
            entry["verification"] = results[entry["name"]] | {"command": command}
    path.write_text(json.dumps(raw, indent=2) + "\n")


def _claimed(spec) -> str:
    claimed = spec.reference_lfw_accuracy
    return "not stated" if claimed is None else f"{claimed * 100:.1f}%"


def lfw_table(manifest: dict) -> str:
    """The LFW table of every model measured so far, from the manifest (one source of truth)."""
    lines = [
        "## LFW verification of the model zoo",
        "",
        f"Machine: {machine_line(threads=False)}. MTCNN detection, the face nearest the centre of each LFW photo,",
        "each model's own alignment. Same-person pairs: LFW `pairs.txt` pairs whose photos are in `lfw/`;",
        "different-person pairs: random cross-identity pairs of the same photos. Accuracy is 10-fold cross-validated",
        "on balanced pairs; thresholds are cosine similarities. Each row names the command that measured it.",
        "",
        "| model | LFW accuracy | reference | AUC | thr @ FAR 1e-2 | thr @ FAR 1e-3 | TAR @ FAR 1e-3 "
        "| pairs same / diff | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in manifest.values():
        r = spec.verification
        if r is None:
            continue
        lines.append(
            f"| {spec.name} | {r.accuracy * 100:.2f}% | {_claimed(spec)} | {r.auc:.4f} "
            f"| {r.threshold_far_1e2:.3f} | {r.threshold_far_1e3:.3f} | {r.tar_far_1e3 * 100:.1f}% "
            f"| {r.pairs_same} / {r.pairs_different} | `{r.command}` |"
        )
    return "\n".join(lines)


def _time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_model_speed_benchmark(args: argparse.Namespace) -> int:
    from .zoo.registry import load_model

    configure_cpu_threads()
    rows = []
    for name in _ready_models(args.models):
        model = load_model(name)
        h, w = model.input_size
        timings = []
        for batch in (1, 8):
            crops = torch.rand(batch, 3, h, w, requires_grad=True)

            def step(crops=crops, model=model):
                crops.grad = None
                model(crops).sum().backward()

            timings.append(_time_it(step, args.repeats))
        rows.append((name, f"{w}x{h}", timings[0] * 1000, timings[1] * 1000))
        print(f"{name}: forward+backward {timings[0] * 1000:.0f} ms (1 face), {timings[1] * 1000:.0f} ms (8 faces)")
    update_markdown_section(BENCHMARKS_MD, "model-speed", model_speed_table(rows, args.repeats, bool(args.models)))
    if args.output:
        args.output.write_text(json.dumps(rows))
    return 0


def _resize_to_megapixels(photo: torch.Tensor, megapixels: float) -> torch.Tensor:
    """The photo resampled to about ``megapixels`` (to measure memory on 24 MP without such a file)."""
    import math

    import torch.nn.functional as F

    h, w = photo.shape[-2:]
    scale = math.sqrt(megapixels * 1e6 / (h * w))
    return F.interpolate(photo, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)


def run_speed_benchmark(args: argparse.Namespace) -> int:
    """Seconds to protect the faces of one real photo per preset, detection included; peak memory."""
    import resource

    from .attack import preset
    from .image import load_image
    from .protect import Protector

    configure_cpu_threads()
    if not args.photo.is_file():
        print(f"{args.photo} not found (pass --photo)", file=sys.stderr)
        return 2
    rows = []
    for name in args.presets:
        protector = Protector(preset(name), ensemble=args.ensemble, device=args.device)
        for run in range(args.repeats + 1):  # the first run warms caches and is not counted
            # every counted run starts cold: a remembered face would warm-start and halve the steps
            # (the album case, measured by 'bench album')
            protector.cloak.memory.clear()
            t0 = time.perf_counter()
            photo = load_image(args.photo)
            if args.megapixels:
                photo = _resize_to_megapixels(photo, args.megapixels)
            t1 = time.perf_counter()
            faces = protector.detector.detect(photo)[: args.faces]
            t2 = time.perf_counter()
            result = protector.protect_tensor(photo, faces)
            t3 = time.perf_counter()
            if run > 0:
                rows.append((name, photo.shape[-1], photo.shape[-2], len(faces), t1 - t0, t2 - t1, t3 - t2, t3 - t0))
                print(
                    f"{name}: {photo.shape[-1]}x{photo.shape[-2]}, {len(faces)} face(s): load {t1 - t0:.1f} s, "
                    f"detect {t2 - t1:.1f} s, protect {t3 - t2:.1f} s, total {t3 - t0:.1f} s, face DSSIM "
                    f"{max(result.face_dssim):.4f}",
                    flush=True,
                )
            # the peak RSS is one photo's: the previous run's photos are gone before the next is read
            del photo, result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")
    lines = [
        "## Speed: protecting one photo on this CPU",
        "",
        f"Command: `facecloak {' '.join(sys.argv[1:])}` ({machine_line()}); photo "
        f"`{args.photo.name}`; ensemble {', '.join(protector.ensemble_names)}. Peak RSS of the whole run: "
        f"{peak:.0f} MB.",
        "",
        "| preset | photo | faces | load (s) | detect (s) | protect (s) | total (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {w}x{h} | {n} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for p, w, h, n, a, b, c, d in rows]
    key = f"speed-{args.megapixels:g}mp" if args.megapixels else "speed"
    update_markdown_section(BENCHMARKS_MD, key, "\n".join(lines))
    return 0
