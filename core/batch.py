"""Batch protection of albums from the command line: ``facecloak protect``.

Each photo is written as soon as it is done (atomically, see :mod:`.export`), one bad photo never stops
the album, and a small journal in the output folder lets ``--resume`` finish an interrupted run without
recomputing what is already done. ``--jobs N`` runs N worker processes, each with its own models.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .export import ExportOptions, export_target, remove_stale_temp_files
from .files import replace_atomically
from .image import display_name

if TYPE_CHECKING:
    from .attack import CloakConfig

JOURNAL_NAME = ".facecloak-journal.json"
JOURNAL_VERSION = 1
FINISHED = ("protected", "no face")  # statuses a resumed run does not redo


def add_protect_arguments(protect: argparse.ArgumentParser) -> None:
    protect.add_argument("paths", nargs="+", type=Path, help="photos and folders (searched recursively)")
    protect.add_argument("-o", "--output", type=Path, required=True, help="folder for the protected copies")
    protect.add_argument("--preset", choices=["low", "mid", "high"], default="mid")
    protect.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    protect.add_argument(
        "--set",
        dest="knobs",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="expert: override any attack knob, e.g. --set dssim_budget=0.005 --set robustness.jpeg=false "
        "(values are JSON; an unknown knob lists the known ones)",
    )
    protect.add_argument("--suffix", default="_cloaked", help="added to each file name (default _cloaked)")
    protect.add_argument(
        "--format", choices=["same", "jpeg", "png"], default="same", help="output format (default: the input's)"
    )
    protect.add_argument(
        "--quality", type=int, default=None, help="JPEG quality 1-100 (default: the input's estimate, else 92)"
    )
    protect.add_argument(
        "--keep-metadata", action="store_true", help="keep the capture date and camera model (all else is stripped)"
    )
    protect.add_argument(
        "--report", action="store_true", help="measure protection on the written file; JSON next to each output"
    )
    protect.add_argument("--resume", action="store_true", help="finish an interrupted run into the same folder")
    protect.add_argument("--overwrite", action="store_true", help="replace existing protected copies")
    protect.add_argument("--jobs", type=int, default=1, help="photos protected in parallel (worker processes)")
    protect.add_argument("--ensemble", nargs="+", default=None, help="attack models (default: manifest roles)")
    protect.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    protect.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


# -- settings and the journal -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """Everything a worker needs to build its own models and protect photos the same way."""

    preset: str = "mid"
    steps: int | None = None
    knobs: tuple[str, ...] = ()  # expert overrides, "KNOB=VALUE"
    ensemble: tuple[str, ...] | None = None
    device: str = "auto"
    options: ExportOptions = field(default_factory=ExportOptions)
    report: bool = False
    threads: int = 1

    def fingerprint(self) -> str:
        """What changes the output bytes; a resumed run with other settings says so."""
        data = {"preset": self.preset, "steps": self.steps, "ensemble": self.ensemble, **asdict(self.options)}
        if self.knobs:
            data["knobs"] = list(self.knobs)
        data.pop("overwrite", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def cloak_config(self) -> CloakConfig:
        """The preset, then ``steps``, then the expert knobs; ValueError names a bad knob."""
        from .attack import parse_assignments, preset, with_overrides

        config = preset(self.preset, **({"steps": self.steps} if self.steps is not None else {}))
        return with_overrides(config, parse_assignments(self.knobs))


def write_json_atomic(path: Path, data: dict) -> None:
    """Temp file + rename, so a kill at any moment leaves the old or the new file, never half of one."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())

    replace_atomically(path, write)


class Journal:
    """Which sources are finished, in ``OUTDIR/.facecloak-journal.json``; rewritten after every photo."""

    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        self.fingerprint = fingerprint
        self.entries: dict[str, dict] = {}
        self.previous_fingerprint: str | None = None

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):  # unreadable journal: start afresh; finished outputs are still found on disk
            return
        if isinstance(data, dict) and data.get("version") == JOURNAL_VERSION and isinstance(data.get("done"), dict):
            self.entries = data["done"]
            self.previous_fingerprint = data.get("settings")

    @staticmethod
    def key(source: Path) -> str:
        return os.path.realpath(source)  # never raises on a symlink loop

    def finished(self, source: Path, target: Path) -> bool:
        """Finished earlier: a photo without face, or a protected copy still there with its recorded size."""
        entry = self.entries.get(self.key(source))
        if not entry or entry.get("status") not in FINISHED:
            return False
        if entry["status"] == "no face":
            return True
        try:
            return target.stat().st_size == entry.get("size")
        except OSError:
            return False

    def record(self, source: Path, status: str, output: Path | None) -> None:
        size = None
        if output is not None:
            with contextlib.suppress(OSError):
                size = output.stat().st_size
        self.entries[self.key(source)] = {"status": status, "output": output.name if output else None, "size": size}
        self.save()

    def save(self) -> None:
        data = {"version": JOURNAL_VERSION, "settings": self.fingerprint, "done": self.entries}
        try:
            write_json_atomic(self.path, data)
        except OSError as err:  # a full disk must not kill the batch; the outputs themselves are intact
            print(f"warning: cannot update the resume journal ({err.strerror or err})", file=sys.stderr)


# -- one photo --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """A photo's outcome as plain data (it crosses process boundaries with --jobs)."""

    source: str
    status: str  # "protected", "no face", "skipped", "done earlier", "error"
    output: str | None = None
    faces: int = 0
    seconds: float = 0.0
    message: str = ""
    face_dssim: tuple[float, ...] = ()
    report: str | None = None  # one-line protection summary, with --report


class Worker:
    """Models loaded once; protects photos one after another (in the main process or a pool worker)."""

    def __init__(self, settings: BatchSettings) -> None:
        from .protect import Protector

        self.settings = settings
        self.protector = Protector(settings.cloak_config(), settings.ensemble, settings.device)
        self.evaluator = None
        self.album: list = []  # clean embeddings of every face protected so far: links to older photos
        self.report_problem = ""
        if settings.report:
            try:
                from .report import ProtectionEvaluator
            except ImportError:
                self.report_problem = "report not available in this version"
            else:
                try:
                    self.evaluator = ProtectionEvaluator(_measured_evaluators(), device=settings.device)
                except (ValueError, OSError, RuntimeError) as err:
                    self.report_problem = f"report unavailable: {' '.join(str(err).split())}"

    def __call__(
        self, source: Path, out_dir: Path, progress: Callable[[int, int, float], None] | None = None
    ) -> Result:
        start = time.perf_counter()
        try:
            done = self.protector.protect_path(source, out_dir, self.settings.options, progress)
        except MemoryError:
            return Result(str(source), "error", message=f"{display_name(source)}: not enough memory")
        except Exception as err:  # one bad photo must not stop the album; say what it was
            text = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            return Result(str(source), "error", message=f"{display_name(source)}: unexpected error ({text})")
        o = done.outcome
        result = Result(
            str(source),
            o.status,
            str(o.output) if o.output else None,
            o.faces,
            time.perf_counter() - start,
            o.message,
            tuple(o.face_dssim),
        )
        if o.status == "protected" and self.settings.report:
            result.report = self._report(done, Path(o.output))
        return result

    def _report(self, done, output: Path) -> str:
        """Measure on the file as written (after encoding), so the numbers are what an uploader gets."""
        if self.evaluator is None:
            return self.report_problem
        from .image import ImageLoadError, open_photo, pil_to_tensor

        try:
            written = pil_to_tensor(open_photo(output).rgb)
            report = self.evaluator.report(
                done.clean, written, done.faces, self.protector.ensemble_names, album=self.album
            )
            self.album += [face.clean_embeddings for face in report.faces]
            path = report_path(output)
            write_json_atomic(path, report.to_dict())
        except (ImageLoadError, OSError, ValueError, RuntimeError) as err:
            return f"report failed: {' '.join(str(err).split())[:200]}"
        return (
            f"match rate {report.match_rate_before:.0%} -> {report.match_rate_after:.0%} on "
            f"{', '.join(report.evaluators) or 'no evaluator'}; report {path.name}"
        )


def _models_problem(settings: BatchSettings) -> str:
    """Why the ensemble cannot be loaded (unknown or not converted), or an empty string."""
    from .protect import default_ensemble
    from .zoo.manifest import load_manifest
    from .zoo.registry import cache_status

    manifest = load_manifest()
    for name in settings.ensemble or default_ensemble():
        if name not in manifest:
            return f"unknown model {name!r}; known: {', '.join(manifest)}"
        status = cache_status(manifest[name])
        if not status.ready:
            return f"{name}: {status.message} (run 'facecloak models --build')"
    return ""


def _measured_evaluators() -> list[str]:
    """Default evaluators that have measured thresholds (an unmeasured one cannot say 'matched')."""
    from .protect import default_evaluators
    from .zoo.manifest import load_manifest

    manifest = load_manifest()
    return [n for n in default_evaluators() if n in manifest and manifest[n].verification is not None]


def report_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.report.json")


_worker: Worker | None = None


def _init_worker(settings: BatchSettings) -> None:
    global _worker
    import torch

    torch.set_num_threads(settings.threads)  # N processes share the cores instead of fighting over them
    _worker = Worker(settings)


def _run_in_worker(source: str, out_dir: str) -> Result:
    assert _worker is not None
    return _worker(Path(source), Path(out_dir))


# -- the batch --------------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    results: list[Result]
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == "error"]

    def line(self) -> str:
        order = ["protected", "no face", "done earlier", "skipped", "error"]
        parts = [f"{self.count(s)} {'failed' if s == 'error' else s}" for s in order if self.count(s)]
        return f"done in {self.seconds:.0f} s: " + (", ".join(parts) or "nothing to do")


def plan(
    photos: Sequence[Path], out_dir: Path, settings: BatchSettings, journal: Journal | None
) -> tuple[list[Path], list[Result]]:
    """Split photos into work to do and results known without computing (finished earlier, exists)."""
    todo, known = [], []
    for source in photos:
        try:
            target = export_target(source, out_dir, settings.options)
        except (OSError, ValueError) as err:
            known.append(Result(str(source), "error", message=f"{display_name(source)}: {err}"))
            continue
        if journal is not None and journal.finished(source, target):
            known.append(Result(str(source), "done earlier", str(target) if target.exists() else None))
        elif target.exists() and not settings.options.overwrite:
            if journal is not None:
                # written whole by an atomic rename; the kill came before the journal line: it is finished
                journal.entries[journal.key(source)] = {
                    "status": "protected",
                    "output": target.name,
                    "size": target.stat().st_size,
                }
                known.append(Result(str(source), "done earlier", str(target)))
            else:
                known.append(
                    Result(
                        str(source),
                        "skipped",
                        str(target),
                        message=f"{display_name(target)} exists (use --resume or --overwrite)",
                    )
                )
        else:
            todo.append(source)
    return todo, known


def _results(
    todo: Sequence[Path], out_dir: Path, settings: BatchSettings, jobs: int, worker: Worker | None
) -> Iterator[Result]:
    if jobs <= 1 or len(todo) <= 1:
        worker = worker or Worker(settings)
        for source in todo:
            yield worker(source, out_dir)
        return
    import multiprocessing

    # spawn: a forked copy of a process holding torch threads can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(settings,)) as pool:
        pending: dict[Future, Path] = {pool.submit(_run_in_worker, str(s), str(out_dir)): s for s in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                source = pending.pop(future)
                try:
                    yield future.result()
                except Exception as err:  # a crashed worker fails its photo, not the album
                    text = " ".join(str(err).split())[:200] or type(err).__name__
                    yield Result(str(source), "error", message=f"{display_name(source)}: worker failed ({text})")


def run_batch(
    photos: Sequence[Path],
    out_dir: Path,
    settings: BatchSettings,
    resume: bool = False,
    jobs: int = 1,
    worker: Worker | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> BatchSummary:
    """Protect ``photos`` into ``out_dir``; never raises for a bad photo. ``worker`` reuses loaded models."""
    start = time.perf_counter()
    log = log or (lambda text: print(text, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(out_dir)
    if removed:
        log(f"removed {removed} unfinished temporary file(s) left by an interrupted run")
    journal = Journal(out_dir, settings.fingerprint())
    if resume:
        journal.load()
        if journal.previous_fingerprint not in (None, journal.fingerprint):
            log("note: settings differ from the interrupted run; finished photos are kept as they are")
    todo, results = plan(photos, out_dir, settings, journal if resume else None)
    for r in results:
        if r.status != "done earlier":
            log(f"{display_name(r.source)}: {r.status}: {r.message}")
    if resume and results:
        log(f"resuming: {sum(r.status == 'done earlier' for r in results)} photo(s) already done")

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="photo", file=sys.stderr, dynamic_ncols=True)
        log = bar.write
    try:
        for result in _results(todo, out_dir, settings, jobs, worker):
            results.append(result)
            if result.status in FINISHED or result.status == "error":
                # errors are recorded too, for the record; ``finished`` only trusts FINISHED statuses
                output = Path(result.output) if result.output else None
                journal.record(Path(result.source), result.status, output)
            log(_describe(result))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return BatchSummary(results, time.perf_counter() - start)


def _describe(r: Result) -> str:
    name = display_name(r.source)
    if r.status == "protected":
        worst = max(r.face_dssim, default=0.0)
        text = f"{name}: protected {r.faces} face(s), DSSIM {worst:.4f}, {r.seconds:.1f} s -> {display_name(r.output)}"
        return f"{text}; {r.report}" if r.report else text
    if r.status == "error":
        return r.message if r.message.startswith(name) else f"{name}: {r.message}"
    return f"{name}: {r.status}" + (f" ({r.message})" if r.message else "")


def run_protect(args: argparse.Namespace) -> int:
    from .protect import iter_photos
    from .zoo.registry import ModelNotReady

    try:
        options = ExportOptions(
            suffix=args.suffix,
            format=args.format,
            jpeg_quality=args.quality,
            keep_metadata=args.keep_metadata,
            overwrite=args.overwrite,
        )
    except ValueError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("cannot start: --jobs must be at least 1", file=sys.stderr)
        return 2
    out_dir: Path = args.output
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"cannot start: output folder {out_dir}: {err.strerror or err}", file=sys.stderr)
        return 2
    listing_errors: list[str] = []
    photos = iter_photos(args.paths, on_error=lambda _p, msg: listing_errors.append(msg), exclude=out_dir)
    for message in listing_errors:
        print(message, file=sys.stderr)
    if not photos:
        print("no photos found in the given paths", file=sys.stderr)
        return 1
    jobs = min(args.jobs, len(photos))
    settings = BatchSettings(
        preset=args.preset,
        steps=args.steps,
        knobs=tuple(args.knobs),
        ensemble=tuple(args.ensemble) if args.ensemble else None,
        device=args.device,
        options=options,
        report=args.report,
        threads=max(1, (os.cpu_count() or 1) // jobs),
    )
    try:
        settings.cloak_config()
    except ValueError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    worker = None
    if jobs == 1:
        try:  # load the models before the first photo, so a missing model is one clear message
            worker = Worker(settings)
        except (ModelNotReady, ValueError) as err:
            print(f"cannot start: {err}", file=sys.stderr)
            return 2
        names = ", ".join(worker.protector.ensemble_names)
        print(
            f"protecting {len(photos)} photo(s) on {worker.protector.device} with ensemble {names}; "
            f"perceptual terms: {worker.protector.cloak.perceptual_terms}",
            flush=True,
        )
        if worker.report_problem:
            print(worker.report_problem, file=sys.stderr)
    else:
        problem = _models_problem(settings)
        if problem:  # checked here: a worker failing at start-up would fail every photo with a vaguer message
            print(f"cannot start: {problem}", file=sys.stderr)
            return 2
        print(f"protecting {len(photos)} photo(s) with {jobs} worker processes", flush=True)

    summary = run_batch(
        photos,
        out_dir,
        settings,
        resume=args.resume,
        jobs=jobs,
        worker=worker,
        progress=not args.no_progress,
    )
    print(summary.line(), flush=True)
    if summary.failed:
        print(f"{len(summary.failed)} photo(s) failed:", file=sys.stderr)
        for r in summary.failed:
            print(f"  {_describe(r)}", file=sys.stderr)
    print(f"protected copies are in {out_dir}", flush=True)
    return 1 if summary.failed else 0
