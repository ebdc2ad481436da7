"""Batch protection of albums from the command line: ``facecloak protect``.

Each photo is written as soon as it is done (atomically, see :mod:`.export`), one bad photo never stops
the album, and a small journal in the output folder lets ``--resume`` finish an interrupted run without
recomputing what is already done (a photo and its report are separate steps). ``--jobs N`` runs N worker
processes, each with its own models.

No photo given is left unprotected in silence: the output mirrors each given folder's subfolders, two photos
that would still share a copy fail loudly, FaceCloak's own outputs (recognised by their marker) are named and
left alone, and the exit code is 1 whenever a photo given was not protected.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .attack import CloakConfig, parse_assignments
from .device import resolves_to_cuda
from .export import ExportOptions, export_target, facecloak_marker, remove_stale_temp_files
from .files import replace_atomically
from .image import ImageLoadError, display_name, display_path
from .protect import FoundPhoto, PhotoOutcome, Protector, Status, build_config, find_photos, measure
from .zoo.manifest import Roles

JOURNAL_NAME = ".facecloak-journal.json"
JOURNAL_VERSION = 2  # 2: the report is a step of its own; outputs are named relative to the output folder
FINISHED = (Status.PROTECTED, Status.NO_FACE)  # statuses a resumed run does not redo
# Outcomes that leave nothing to do: any other photo given makes the exit code 1.
SETTLED = (Status.PROTECTED, Status.NO_FACE, Status.DONE_EARLIER, Status.FACECLOAK_OUTPUT)


def add_protect_arguments(protect: argparse.ArgumentParser) -> None:
    protect.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PHOTO_OR_FOLDER",
        help="photos, and folders searched recursively (their subfolders are mirrored in the output folder)",
    )
    protect.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTDIR",
        help="folder for the protected copies (required; created if missing; not an input folder itself)",
    )
    protect.add_argument(
        "--preset",
        choices=["low", "mid", "high"],
        default="mid",
        help="strength: low is the least visible change, high the strongest (default: mid)",
    )
    protect.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="optimisation steps per face (default: the preset's number)",
    )
    protect.add_argument(
        "--set",
        dest="knobs",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="expert: override any attack knob, e.g. --set dssim_budget=0.005 --set robustness.jpeg=false "
        "(values are JSON; an unknown knob lists the known ones; default: none)",
    )
    protect.add_argument(
        "--suffix",
        default="_cloaked",
        metavar="TEXT",
        help="added to each file name before its extension (default: _cloaked)",
    )
    protect.add_argument(
        "--format",
        choices=["same", "jpeg", "png"],
        default="same",
        help="output format; same keeps each photo's own (default: same)",
    )
    protect.add_argument(
        "--quality",
        type=int,
        default=None,
        metavar="Q",
        help="JPEG, WebP and HEIC quality, 1-100 (default: a JPEG's own estimated quality, kept within 75-95; "
        "else 92, HEIC 90; a lossless WebP stays lossless)",
    )
    protect.add_argument(
        "--keep-metadata",
        action="store_true",
        help="keep the capture date and camera model (default: off; everything else is always stripped)",
    )
    protect.add_argument(
        "--report",
        action="store_true",
        help="measure protection on each written file, JSON next to each copy (default: off)",
    )
    protect.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run into the same folder, writing missing reports too (default: off)",
    )
    protect.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing protected copies (default: off; a photo whose copy exists is not protected)",
    )
    protect.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="photos protected in parallel, one worker process with its own models each (default: 1)",
    )
    protect.add_argument(
        "--ensemble", nargs="+", default=None, metavar="MODEL", help="attack models (default: the manifest's ensemble)"
    )
    protect.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the attack runs; auto takes CUDA, then Apple MPS, then the CPU (default: auto)",
    )
    protect.add_argument("--no-progress", action="store_true", help="log lines only, no progress bar (default: off)")


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
        if resolves_to_cuda(self.device):  # the GPU's presets differ (GPU_PRESETS); CPU runs keep their fingerprint
            data["gpu"] = True
        data.pop("overwrite", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def cloak_config(self) -> CloakConfig:
        """The preset (as it runs on ``device``), then ``steps``, then the expert knobs; ValueError names a bad
        knob."""
        return build_config(self.preset, steps=self.steps, knobs=parse_assignments(self.knobs), device=self.device)


def write_json_atomic(path: Path, data: dict) -> None:
    """Temp file + rename, so a kill at any moment leaves the old or the new file, never half of one."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())

    replace_atomically(path, write)


class Journal:
    """Which sources are finished, in ``OUTDIR/.facecloak-journal.json``; rewritten after every step.

    A photo's entry says how it ended, which copy was written (relative to the output folder) with its size,
    and, as a separate step, which report was written for it: a run killed between the two writes the report
    when resumed with ``--report``, without protecting the photo again.
    """

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

    def status(self, source: Path) -> str | None:
        return (self.entries.get(self.key(source)) or {}).get("status")

    def finished(self, source: Path, target: Path) -> bool:
        """Finished earlier: a photo without face, or a protected copy still there with its recorded size."""
        entry = self.entries.get(self.key(source))
        if not entry or entry.get("status") not in FINISHED:
            return False
        if entry["status"] == Status.NO_FACE:
            return True
        try:
            return target.stat().st_size == entry.get("size")
        except OSError:
            return False

    def report_done(self, source: Path, target: Path) -> bool:
        """The report step of a finished photo: recorded, and its file still there."""
        entry = self.entries.get(self.key(source)) or {}
        return bool(entry.get("report")) and report_path(target).is_file()

    def adopt(self, source: Path, target: Path) -> None:
        """A copy written whole (atomic rename) by a run killed before its journal line: it is finished."""
        self.entries[self.key(source)] = {"status": Status.PROTECTED.value, **self._output(target), "report": None}

    def record(self, source: Path, status: Status, output: Path | None, report: Path | None = None) -> None:
        entry = {"status": Status(status).value, **self._output(output), "report": report.name if report else None}
        self.entries[self.key(source)] = entry
        self.save()

    def record_report(self, source: Path, report: Path) -> None:
        entry = self.entries.setdefault(self.key(source), {"status": Status.PROTECTED.value})
        entry["report"] = report.name
        self.save()

    def _output(self, output: Path | None) -> dict:
        if output is None:
            return {"output": None, "size": None}
        size = None
        with contextlib.suppress(OSError):
            size = output.stat().st_size
        try:
            name = str(Path(output).relative_to(self.path.parent))
        except ValueError:
            name = Path(output).name
        return {"output": name, "size": size}

    def save(self) -> None:
        data = {"version": JOURNAL_VERSION, "settings": self.fingerprint, "done": self.entries}
        try:
            write_json_atomic(self.path, data)
        except OSError as err:  # a full disk must not kill the batch; the outputs themselves are intact
            print(f"warning: cannot update the resume journal ({err.strerror or err})", file=sys.stderr)


# -- one photo --------------------------------------------------------------------------------------------


class Worker:
    """Models loaded once; protects photos one after another (in the main process or a pool worker)."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.protector = Protector(settings.cloak_config(), settings.ensemble, settings.device)
        self.evaluator = None
        self.album: list = []  # clean embeddings of every face protected so far: links to older photos
        self.report_problem = ""
        if settings.report:
            from .report import ProtectionEvaluator

            try:
                self.evaluator = ProtectionEvaluator(_measured_evaluators(), device=settings.device)
            except (ValueError, OSError, RuntimeError) as err:
                self.report_problem = f"report unavailable: {' '.join(str(err).split())}"

    def __call__(self, job: Job) -> PhotoOutcome:
        """Protect ``job``'s photo (or, for a photo protected earlier, only write its missing report)."""
        if job.report_only:
            return self._report_existing(job.source, job.target)
        try:
            outcome = self.protector.protect_file(job.source, job.target, self.settings.options)
        except MemoryError:
            return PhotoOutcome(job.source, Status.ERROR, message=f"{display_name(job.source)}: not enough memory")
        except Exception as err:  # one bad photo must not stop the album; say what it was
            text = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            return PhotoOutcome(
                job.source, Status.ERROR, message=f"{display_name(job.source)}: unexpected error ({text})"
            )
        if outcome.status is Status.PROTECTED and self.settings.report:
            self._report(outcome)
        return outcome.detached()  # an album's worth of outcomes must not hold every photo's pixels

    def _report_existing(self, source: Path, output: Path) -> PhotoOutcome:
        """The missing report of a photo protected by an earlier run, measured on its copy as written."""
        start = time.perf_counter()
        try:
            outcome = self.protector.earlier_copy(source, output)
        except ImageLoadError as err:
            return PhotoOutcome(source, Status.DONE_EARLIER, output, report_note=f"report failed: {err}")
        except Exception as err:  # one bad photo must not stop the album; say what it was
            text = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            return PhotoOutcome(source, Status.DONE_EARLIER, output, report_note=f"report failed: {text}")
        self._report(outcome)
        outcome.seconds = time.perf_counter() - start
        return outcome.detached()

    def _report(self, outcome: PhotoOutcome) -> None:
        """Measure on the file as written (after encoding), so the numbers are what an uploader gets; the report
        goes next to the copy, and its one-line summary into ``outcome.report_note``."""
        if self.evaluator is None:
            outcome.report_note = self.report_problem
            return
        try:
            report = measure(self.evaluator, outcome, self.protector.ensemble_names, album=self.album)
            path = report_path(outcome.output)
            write_json_atomic(path, report.to_dict())
        except (ImageLoadError, OSError, ValueError, RuntimeError) as err:
            outcome.report_note = f"report failed: {' '.join(str(err).split())[:200]}"
            return
        outcome.report, outcome.report_file = report, path
        # the headline is Search and Verification (the threats a real adversary poses); the own-original match
        # rate follows as the worst case, never as the headline
        outcome.report_note = (
            f"{report.headline} Own original (worst case): match rate {report.match_rate_before:.0%} -> "
            f"{report.match_rate_after:.0%} on {', '.join(report.evaluators) or 'no evaluator'}; report {path.name}"
        )


def _models_problem(settings: BatchSettings) -> str:
    """Why the ensemble cannot be loaded (unknown or not converted), or an empty string."""
    from .zoo.manifest import load_manifest
    from .zoo.registry import cache_status

    manifest = load_manifest()
    for name in settings.ensemble or Roles.load().ensemble:
        if name not in manifest:
            return f"unknown model {name!r}; known: {', '.join(manifest)}"
        status = cache_status(manifest[name])
        if not status.ready:
            return f"{name}: {status.message} (run 'facecloak models --build')"
    return ""


def _measured_evaluators() -> list[str]:
    """Default evaluators that have measured thresholds (an unmeasured one cannot say 'matched')."""
    from .zoo.manifest import load_manifest

    manifest = load_manifest()
    return [n for n in Roles.load().evaluators if n in manifest and manifest[n].verification is not None]


def report_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.report.json")


_worker: Worker | None = None


def _init_worker(settings: BatchSettings) -> None:
    global _worker
    import torch

    torch.set_num_threads(settings.threads)  # N processes share the cores instead of fighting over them
    _worker = Worker(settings)


def _run_in_worker(job: Job) -> PhotoOutcome:
    assert _worker is not None
    return _worker(job)


# -- the batch --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A photo to protect into ``folder`` (the output folder or its mirrored subfolder) as ``target``."""

    source: Path
    target: Path
    report_only: bool = False  # protected by an earlier run: only its report is still to be written

    @property
    def folder(self) -> Path:
        return self.target.parent


_LABELS = {
    Status.FACECLOAK_OUTPUT: "FaceCloak output(s) left alone",
    Status.SKIPPED: "skipped (copy exists)",
    Status.ERROR: "failed",
}


@dataclass
class BatchSummary:
    results: list[PhotoOutcome]
    seconds: float

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[PhotoOutcome]:
        return self.with_status(Status.ERROR)

    @property
    def unprotected(self) -> list[PhotoOutcome]:
        """Photos given and not protected: failed, skipped because their copy exists, or colliding."""
        return [r for r in self.results if r.status not in SETTLED]

    def with_status(self, status: Status) -> list[PhotoOutcome]:
        return [r for r in self.results if r.status == status]

    def line(self) -> str:
        parts = [f"{self.count(s)} {_LABELS.get(s, s)}" for s in Status if self.count(s)]
        return f"done in {self.seconds:.0f} s: " + (", ".join(parts) or "nothing to do")


def _found(photo: Path | FoundPhoto) -> tuple[Path, Path | None]:
    """A photo's path and the given folder it was found under (None: given as a file)."""
    if isinstance(photo, (str, os.PathLike)):
        return Path(photo), None
    return photo.path, photo.root


def plan(
    photos: Sequence[Path | FoundPhoto], out_dir: Path, settings: BatchSettings, journal: Journal | None
) -> tuple[list[Job], list[PhotoOutcome]]:
    """Split photos into work to do and outcomes known without computing.

    Known without computing: FaceCloak's own outputs (left alone), photos whose copy would be another photo's
    copy too (failed), photos finished by an earlier run (``journal``, with ``--resume``) and photos whose copy
    already exists (skipped).
    """
    todo: list[Job] = []
    known: list[PhotoOutcome] = []
    owners: dict[str, Path] = {}  # each target and the source it belongs to
    for photo in photos:
        source, root = _found(photo)
        marker = facecloak_marker(source)
        if marker is not None:
            known.append(PhotoOutcome(source, Status.FACECLOAK_OUTPUT, message=f"already a protected copy ({marker})"))
            continue
        try:
            target = export_target(source, out_dir, settings.options, relative_to=root)
        except (OSError, ValueError) as err:
            known.append(PhotoOutcome(source, Status.ERROR, message=f"{display_name(source)}: {err}"))
            continue
        key = os.path.normcase(os.path.abspath(target))
        if key in owners:
            known.append(PhotoOutcome(source, Status.ERROR, message=_collision(owners[key], target)))
            continue
        owners[key] = source
        step = _plan_one(Job(source, target), settings, journal)
        (todo if isinstance(step, Job) else known).append(step)
    return todo, known


def _collision(other: Path, target: Path) -> str:
    return (
        f"not protected: its copy {display_path(target)} would also be the copy of {display_path(other)}; "
        "protect one of the two into another folder"
    )


def _plan_one(job: Job, settings: BatchSettings, journal: Journal | None) -> Job | PhotoOutcome:
    source, target = job.source, job.target
    if journal is not None and journal.finished(source, target):
        if journal.status(source) == Status.NO_FACE:
            return PhotoOutcome(source, Status.NO_FACE, message="no face found by the earlier run")
        return _report_step(job, settings, journal) or PhotoOutcome(source, Status.DONE_EARLIER, target)
    if target.exists() and not settings.options.overwrite:
        if journal is None:
            message = f"{display_path(target)} exists (use --resume or --overwrite)"
            return PhotoOutcome(source, Status.SKIPPED, target, message=message)
        journal.adopt(source, target)
        return _report_step(job, settings, journal) or PhotoOutcome(source, Status.DONE_EARLIER, target)
    return job


def _report_step(job: Job, settings: BatchSettings, journal: Journal) -> Job | None:
    """The report of a photo protected earlier, when ``--report`` asks for one and it was never written."""
    if settings.report and not journal.report_done(job.source, job.target):
        return replace(job, report_only=True)
    return None


def _outcomes(todo: Sequence[Job], settings: BatchSettings, jobs: int, worker: Worker | None) -> Iterator[PhotoOutcome]:
    if jobs <= 1 or len(todo) <= 1:
        worker = worker or Worker(settings)
        for job in todo:
            yield worker(job)
        return
    import multiprocessing

    # spawn: a forked copy of a process holding torch threads can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(settings,)) as pool:
        pending: dict[Future, Job] = {pool.submit(_run_in_worker, job): job for job in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    yield future.result()
                except Exception as err:  # a crashed worker fails its photo, not the album
                    text = " ".join(str(err).split())[:200] or type(err).__name__
                    message = f"{display_name(job.source)}: worker failed ({text})"
                    yield PhotoOutcome(job.source, Status.ERROR, message=message)


def run_batch(
    photos: Sequence[Path | FoundPhoto],
    out_dir: Path,
    settings: BatchSettings,
    resume: bool = False,
    jobs: int = 1,
    worker: Worker | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> BatchSummary:
    """Protect ``photos`` into ``out_dir``; never raises for a bad photo. ``worker`` reuses loaded models.

    A photo found under a given folder (a :class:`~.protect.FoundPhoto` with its root) goes to the same
    subfolder of ``out_dir``; a plain path goes to ``out_dir`` itself.
    """
    start = time.perf_counter()
    log = log or (lambda text: print(text, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(out_dir, settings.fingerprint())
    if resume:
        journal.load()
        if journal.previous_fingerprint not in (None, journal.fingerprint):
            log("note: settings differ from the interrupted run; finished photos are kept as they are")
    todo, results = plan(photos, out_dir, settings, journal if resume else None)
    removed = _remove_stale_temp_files(out_dir, todo)
    if removed:
        log(f"removed {removed} unfinished temporary file(s) left by an interrupted run")
    for r in results:
        if r.status != Status.DONE_EARLIER:
            log(_describe(r))
    # settled by the journal: before any work, a photo is only known to have no face from the earlier run
    earlier = sum(r.status in (Status.DONE_EARLIER, Status.NO_FACE) for r in results)
    earlier += sum(job.report_only for job in todo)
    if earlier:
        log(f"resuming: {earlier} photo(s) already done")

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="photo", file=sys.stderr, dynamic_ncols=True)
        log = bar.write
    try:
        for outcome in _outcomes(todo, settings, jobs, worker):
            results.append(outcome)
            _record(journal, outcome)
            log(_describe(outcome))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return BatchSummary(results, time.perf_counter() - start)


def _remove_stale_temp_files(out_dir: Path, todo: Sequence[Job]) -> int:
    """Temp files a killed run left where this run writes (the output folder and its mirrored subfolders)."""
    folders = {out_dir, *(job.folder for job in todo)}
    return sum(remove_stale_temp_files(folder) for folder in sorted(folders) if folder.is_dir())


def _record(journal: Journal, outcome: PhotoOutcome) -> None:
    if outcome.status in FINISHED or outcome.status == Status.ERROR:
        # errors are recorded too, for the record; ``finished`` only trusts FINISHED statuses
        journal.record(outcome.source, outcome.status, outcome.output, outcome.report_file)
    elif outcome.status == Status.DONE_EARLIER and outcome.report_file is not None:
        journal.record_report(outcome.source, outcome.report_file)


def _detail(r: PhotoOutcome) -> str:
    """The message without the file name it may start with (the line names the photo by its path)."""
    for prefix in (display_path(r.source), display_name(r.source)):
        if r.message.startswith(f"{prefix}: "):
            return r.message[len(prefix) + 2 :]
    return r.message


def _describe(r: PhotoOutcome) -> str:
    name = display_path(r.source)
    if r.status == Status.PROTECTED:
        worst = max(r.face_dssim, default=0.0)
        output = display_path(r.output or "")
        effort = f" in {r.steps} steps" if r.steps else ""
        text = f"{name}: protected {len(r.faces)} face(s){effort}, DSSIM {worst:.4f}, {r.seconds:.1f} s -> {output}"
        return f"{text}; {r.report_note}" if r.report_note else text
    if r.status == Status.ERROR:
        return f"{name}: {_detail(r)}"
    if r.status == Status.DONE_EARLIER and r.report_note:
        return f"{name}: done earlier; {r.report_note}"
    if r.status == Status.FACECLOAK_OUTPUT:
        return f"{name}: skipped: {_detail(r)}, not protected again"
    return f"{name}: {r.status}" + (f" ({_detail(r)})" if r.message else "")


# -- the command ------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> BatchSettings:
    """The run's settings from the command line; ValueError names a bad option or knob."""
    options = ExportOptions(
        suffix=args.suffix,
        format=args.format,
        jpeg_quality=args.quality,
        keep_metadata=args.keep_metadata,
        overwrite=args.overwrite,
    )
    if args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    settings = BatchSettings(
        preset=args.preset,
        steps=args.steps,
        knobs=tuple(args.knobs),
        ensemble=tuple(args.ensemble) if args.ensemble else None,
        device=args.device,
        options=options,
        report=args.report,
    )
    settings.cloak_config()
    return settings


def _output_problem(out_dir: Path, paths: Sequence[Path]) -> str:
    """Why ``out_dir`` cannot take the protected copies, or an empty string."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"the output {display_path(out_dir)} exists and is not a folder"
    for path in paths:
        if _same_folder(out_dir, path):
            return (
                f"the output folder {display_path(out_dir)} is the input folder {display_path(path)}: the copies "
                "would mix with the originals; choose another folder (a new folder inside it is fine)"
            )
    return ""


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one existing folder (through symlinks, bind mounts or ``..`` alike)."""
    try:
        return a.is_dir() and b.is_dir() and os.path.samefile(a, b)
    except OSError:
        return False


def _inputs(paths: Sequence[Path], out_dir: Path) -> tuple[list[FoundPhoto], list[PhotoOutcome]]:
    """The photos among the given paths, and a failed outcome for each path missing or folder unreadable."""
    missing = [p for p in paths if not os.path.lexists(p)]
    problems = [PhotoOutcome(Path(p), Status.ERROR, message="no such file or folder") for p in missing]
    present = [p for p in paths if os.path.lexists(p)]

    def listing_error(where: Path, message: str) -> None:
        problems.append(PhotoOutcome(where, Status.ERROR, message=message))

    return find_photos(present, on_error=listing_error, exclude=out_dir), problems


def _print_summary(summary: BatchSummary, out_dir: Path) -> None:
    print(summary.line(), flush=True)
    no_face = summary.with_status(Status.NO_FACE)
    if no_face:
        print(f"{len(no_face)} photo(s) with no face found, no copy written:")
        for r in no_face:
            print(f"  {display_path(r.source)}")
    marked = summary.with_status(Status.FACECLOAK_OUTPUT)
    if marked:
        print(f"{len(marked)} photo(s) already protected by FaceCloak, left as they are:")
        for r in marked:
            print(f"  {display_path(r.source)}")
    unprotected = summary.unprotected
    if unprotected:
        print(f"{len(unprotected)} photo(s) not protected:", file=sys.stderr)
        for r in unprotected:
            print(f"  {_describe(r)}", file=sys.stderr)
    print(f"protected copies are in {display_path(out_dir)}", flush=True)


def run_protect(args: argparse.Namespace) -> int:
    """``facecloak protect``: every check runs before anything is created; exit 0 only when no photo was left."""
    from .zoo.registry import ModelNotReady

    try:
        settings = _settings(args)
    except ValueError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    out_dir: Path = args.output
    problem = _output_problem(out_dir, args.paths)
    if problem:
        print(f"cannot start: {problem}", file=sys.stderr)
        return 2
    photos, problems = _inputs(args.paths, out_dir)
    for r in problems:
        print(_describe(r), file=sys.stderr)
    if not photos:
        print("no photos found in the given paths", file=sys.stderr)
        return 1
    jobs = min(args.jobs, len(photos))
    settings = replace(settings, threads=max(1, (os.cpu_count() or 1) // jobs))
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"cannot start: output folder {display_path(out_dir)}: {err.strerror or err}", file=sys.stderr)
        return 2

    summary = run_batch(
        photos,
        out_dir,
        settings,
        resume=args.resume,
        jobs=jobs,
        worker=worker,
        progress=not args.no_progress,
    )
    summary.results[:0] = problems
    _print_summary(summary, out_dir)
    return 1 if summary.unprotected else 0
