"""The one path from a photo file to its protected copy and its report, for ``facecloak protect`` and the app.

    photo file --open_photo--> pixels --detector--> faces --Cloak--> protected pixels --write_protected--> copy
                                                                                       --measure--> report

:class:`Protector` holds what is slow to load and worth keeping: the ensemble's models, the face detector and
the attack with its album memory (warm starts from earlier photos of the same person). Its
:meth:`~Protector.protect_file` protects one file into the target its caller computed once
(:func:`~.export.export_target`) and returns a :class:`PhotoOutcome` whose :class:`Status` says how it
ended; :func:`measure` is the one place the protection report is computed; :func:`build_config` the one place
the attack's configuration is built. The batch runner (:mod:`.batch`, behind ``facecloak protect``) and the
app's worker thread (``facecloak.app.worker``) both protect every photo through these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .attack import Cloak, CloakConfig, CloakResult, ProgressCallback, preset, with_overrides
from .detect import Face, FaceDetector
from .device import device_label, resolves_to_cuda, select_device
from .export import ExportError, ExportOptions, check_not_original, write_protected
from .image import PHOTO_SUFFIXES, ImageLoadError, display_path, open_photo, pil_to_tensor
from .zoo.manifest import Roles
from .zoo.registry import load_model

if TYPE_CHECKING:
    from .report import FaceEmbeddings, ProtectionEvaluator, ProtectionReport


# -- which photos -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundPhoto:
    """A photo file and the given folder it was found under (None when it was given as a file itself)."""

    path: Path
    root: Path | None = None


def find_photos(
    paths: Iterable[Path],
    on_error: Callable[[Path, str], None] | None = None,
    exclude: Path | None = None,
) -> list[FoundPhoto]:
    """Photo files among ``paths`` (folders searched recursively, symlink loops ignored), sorted, unique.

    Each knows the given folder it came from, so the output can mirror the album's subfolders. A photo found
    under two given folders belongs to the first. ``on_error(folder, message)`` hears about folders that
    cannot be listed; photos under ``exclude`` (the output folder, when it lies inside an album) are left out.
    """
    found: dict[Path, Path | None] = {}
    skip = os.path.realpath(exclude) if exclude is not None else None

    def walk_error(err: OSError) -> None:
        if on_error is not None:
            where = Path(err.filename) if err.filename else Path("?")
            on_error(where, f"{display_path(where)}: cannot list folder ({err.strerror or err})")

    for path in paths:
        path = Path(path)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False, onerror=walk_error):
                if skip is not None:
                    dirs[:] = [d for d in dirs if os.path.realpath(Path(root) / d) != skip]
                    if os.path.realpath(root) == skip:
                        continue
                for name in sorted(files):
                    if Path(name).suffix.lower() in PHOTO_SUFFIXES:
                        found.setdefault(Path(root) / name, path)
        else:
            found.setdefault(path, None)
    return [FoundPhoto(p, found[p]) for p in sorted(found)]


def iter_photos(
    paths: Iterable[Path],
    on_error: Callable[[Path, str], None] | None = None,
    exclude: Path | None = None,
) -> list[Path]:
    """The paths of :func:`find_photos`: photo files among ``paths``, sorted, unique."""
    return [photo.path for photo in find_photos(paths, on_error, exclude)]


# -- the outcome ------------------------------------------------------------------------------------------


class Status(StrEnum):
    """How a photo ended, the settled first. The values are the words the command line prints and the journal
    stores."""

    PROTECTED = "protected"  # its protected copy is written
    NO_FACE = "no face"  # nothing to protect: no copy written
    DONE_EARLIER = "done earlier"  # protected by an earlier run (``facecloak protect --resume``)
    FACECLOAK_OUTPUT = "facecloak output"  # a copy FaceCloak wrote, given as a photo: left alone
    SKIPPED = "skipped"  # its copy's name is taken by a file that is not to be replaced
    ERROR = "error"  # not protected; the message says why


@dataclass
class PhotoOutcome:
    """What became of one photo: the one record the batch runner, the command line and the app read.

    The last three fields are in-memory results, for the report and the app's display; :meth:`detached` drops
    them (what a batch collects for a whole album and sends between processes).
    """

    source: Path
    status: Status
    output: Path | None = None  # the copy written; when SKIPPED, the file that holds its name
    faces: tuple[Face, ...] = ()  # the faces protected
    seconds: float = 0.0
    message: str = ""  # one line: why, for anything but PROTECTED
    face_dssim: tuple[float, ...] = ()  # per face, the change's DSSIM at photo resolution
    steps: int = 0  # optimisation steps the attack ran (an album photo's warm start may need fewer than the preset's)
    device: str = ""  # where the attack ran, as device_label names it, e.g. "CPU (1 thread)"
    report_file: Path | None = None  # the report written next to the copy, if any
    report_note: str = ""  # the report in one line: its headline, or why there is none
    clean: torch.Tensor | None = None  # the decoded photo, 1,3,H,W in [0, 1]
    protected: torch.Tensor | None = None  # the protected photo (kept when its copy could not be written)
    report: ProtectionReport | None = None

    def detached(self) -> PhotoOutcome:
        """This outcome without its pixels and report object: plain data."""
        return replace(self, clean=None, protected=None, report=None)


# -- the attack's configuration ---------------------------------------------------------------------------


def build_config(
    preset_name: str = "mid",
    steps: int | None = None,
    dssim_budget: float | None = None,
    robustness: Mapping[str, bool] | None = None,
    knobs: Mapping[str, object] | None = None,
    device: str | torch.device = "auto",
) -> CloakConfig:
    """The attack's configuration: the preset, then each override given (None: the preset's own).

    Args:
        preset_name: ``low``, ``mid`` or ``high``; as it runs on a CUDA GPU when ``device`` is one
            (:data:`~.attack.config.GPU_PRESETS`).
        steps: optimisation steps per face.
        dssim_budget: the face-region DSSIM budget.
        robustness: degradation kinds switched on or off by name, e.g. ``{"jpeg": False}``.
        knobs: expert overrides of any knob by name, applied last (see :func:`~.attack.with_overrides`;
            ``--set KNOB=VALUE`` strings become one with :func:`~.attack.parse_assignments`).
        device: the device setting the attack will run on (``auto`` as :class:`Protector` resolves it).
            Default: ``auto``.

    Raises:
        ValueError: an unknown preset or knob, or a value out of range (the message names it).
    """
    changes: dict[str, object] = {}
    if steps is not None:
        changes["steps"] = steps
    if dssim_budget is not None:
        changes["dssim_budget"] = dssim_budget
    for kind, on in (robustness or {}).items():
        changes[f"robustness.{kind}"] = on
    changes.update(knobs or {})
    return with_overrides(preset(preset_name, gpu=resolves_to_cuda(device)), changes)


# -- the pipeline -----------------------------------------------------------------------------------------


class Protector:
    """The loaded models, face detector and attack, kept while photos are protected one after another.

    Args:
        config: the attack's knobs (:func:`build_config`); :meth:`configure` changes them later.
        ensemble: the attack's models by name. Default: the manifest's ensemble role.
        device: where the attack runs; ``auto`` takes CUDA, then Apple MPS, then the CPU. Default: ``auto``.
        detector: a face detector already loaded (the app's, which finds faces as photos are added).
            Default: a new one, on the CPU.
    """

    def __init__(
        self,
        config: CloakConfig,
        ensemble: Sequence[str] | None = None,
        device: str = "auto",
        detector: FaceDetector | None = None,
    ) -> None:
        self.device = select_device(device)
        self.config = config
        self.ensemble_names = list(ensemble or Roles.load().ensemble)
        self.models = [load_model(name, self.device) for name in self.ensemble_names]
        self.detector = detector or FaceDetector()
        self.cloak = Cloak(self.models, config)

    def configure(self, config: CloakConfig) -> None:
        """Protect the next photos with ``config``; the loaded models and the album memory are kept."""
        if config == self.config:
            return
        memory = self.cloak.memory
        self.cloak = Cloak(self.models, config, lpips=self.cloak.lpips)
        self.cloak.memory = memory
        self.config = config

    def protect_tensor(
        self,
        photo: torch.Tensor,
        faces: Sequence[Face] | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        config: CloakConfig | None = None,
    ) -> CloakResult:
        """Protect ``faces`` of ``photo`` (``1,3,H,W`` in [0, 1]; None: every face found) in memory.

        ``config``, when given, is for this photo only: a separate attack on the same models that neither reads
        nor changes the album memory (the app's quick preview). Raises CloakCancelled when ``should_cancel`` says.
        """
        cloak = self.cloak if config is None else Cloak(self.models, config, lpips=self.cloak.lpips)
        faces = list(self.detector.detect(photo) if faces is None else faces)
        return cloak(photo.to(self.device), faces, progress, should_cancel)

    def protect_file(
        self,
        source: Path,
        target: Path,
        options: ExportOptions,
        faces: Sequence[Face] | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        started: Callable[[int], None] | None = None,
        numbered: bool = False,
    ) -> PhotoOutcome:
        """Protect the photo file ``source`` into ``target``: decoded once, faces found, cloaked, written atomically.

        Args:
            source: the photo; never modified.
            target: where its copy goes, computed once by the caller (:func:`~.export.export_target`).
            options: how the copy is written: format, quality, metadata, whether a file at ``target`` is replaced.
            faces: the faces to protect. Default: every face the detector finds.
            progress: called after each step of the attack with (step, steps, loss).
            should_cancel: polled before each step; True stops the attack with :class:`~.attack.CloakCancelled`.
            started: called with the number of faces as the attack starts.
            numbered: when ``target`` is taken, write a numbered name beside it (:func:`~.export.write_protected`).

        Returns:
            The outcome. Every expected failure (an unreadable photo, no face, a copy that cannot be written) is an
            outcome, not an exception; a copy that could not be written keeps its pixels in ``protected``.

        Raises:
            CloakCancelled: ``should_cancel`` returned True.
        """
        start = time.perf_counter()
        source = Path(source)
        try:
            check_not_original(source, target)  # before minutes of work that could not be written
            photo = open_photo(source)
        except (ExportError, ImageLoadError) as err:
            return PhotoOutcome(source, Status.ERROR, message=str(err))
        clean = pil_to_tensor(photo.rgb)
        chosen = list(self.detector.detect(clean) if faces is None else faces)
        if not chosen:
            message = "no face found" if faces is None else "no face selected"
            return PhotoOutcome(source, Status.NO_FACE, seconds=time.perf_counter() - start, message=message)
        if started is not None:
            started(len(chosen))
        result = self.protect_tensor(clean, chosen, progress, should_cancel)
        outcome = PhotoOutcome(
            source,
            Status.PROTECTED,
            faces=tuple(chosen),
            face_dssim=tuple(result.face_dssim),
            steps=len(result.steps),
            device=device_label(self.device),
        )
        outcome.clean, outcome.protected = clean, result.photo.cpu()
        try:
            outcome.output = write_protected(photo, outcome.protected, target, options, numbered)
        except FileExistsError as err:  # the name was taken while the attack ran
            outcome.status, outcome.output, outcome.message = Status.SKIPPED, Path(target), str(err)
        except ExportError as err:
            outcome.status, outcome.message = Status.ERROR, str(err)
        outcome.seconds = time.perf_counter() - start
        return outcome

    def earlier_copy(self, source: Path, output: Path) -> PhotoOutcome:
        """A photo protected by an earlier run into ``output``, decoded and its faces found again, ready for
        :func:`measure` without being protected again.

        Raises:
            ImageLoadError: the photo cannot be read any more.
        """
        clean = pil_to_tensor(open_photo(source).rgb)
        faces = tuple(self.detector.detect(clean))
        return PhotoOutcome(Path(source), Status.DONE_EARLIER, Path(output), faces, clean=clean)


def measure(
    evaluator: ProtectionEvaluator,
    outcome: PhotoOutcome,
    ensemble: Sequence[str],
    on_written: bool = True,
    album: list[FaceEmbeddings] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ProtectionReport:
    """The protection report of a protected photo: the one place the pipeline calls the evaluator.

    Args:
        evaluator: the held-out models that measure.
        outcome: a protected photo (or one protected earlier), with its clean pixels and its faces.
        ensemble: the attack's models by name (the evaluator refuses models of their families).
        on_written: measure the copy as written, decoded from ``outcome.output``: what an uploader gets, after
            encoding. False: the protected pixels in memory (``outcome.protected``). Default: True.
        album: clean embeddings of faces protected earlier, compared too; this photo's faces are added to it.
            Default: None (no album).
        should_cancel: polled by the evaluator well under a second apart; True stops it with
            :class:`~.attack.CloakCancelled`. Default: None (never cancelled).

    Raises:
        ImageLoadError: the written copy cannot be read back.
        ValueError, RuntimeError, OSError: the evaluator cannot measure this photo.
    """
    protected = pil_to_tensor(open_photo(outcome.output).rgb) if on_written else outcome.protected
    report = evaluator.report(
        outcome.clean,
        protected,
        list(outcome.faces),
        ensemble,
        album=album or (),
        should_cancel=should_cancel,
        export_file=outcome.output if on_written else None,  # face DSSIM against the original encoded the same way
    )
    if outcome.steps:
        report.attack = {"steps": outcome.steps, "device": outcome.device}
    if album is not None:
        album.extend(face.clean_embeddings for face in report.faces)
    return report
