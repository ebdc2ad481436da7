"""What the window is doing and how far a run has got: one monotone progress fraction and an ETA (no Qt, no torch).

A protect run goes photo by photo; each photo has optimisation steps (cost: faces x steps) and, when measuring is
on, a report stage (cost: faces x report seconds per face). :class:`RunProgress` is fed the worker's events with
the time they arrived and answers three questions: how far the whole run is (0..1, never going back), how long
it still needs (from the speed measured so far in this run), and what stage it is in. Time spent paused is left
out of every measurement, so a pause neither stretches the measured speed nor the ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any


class Mode(str, Enum):
    """What the window is busy with; only one at a time (compares equal to its plain string)."""

    IDLE = "idle"
    PROTECT = "protect"
    PREVIEW = "preview"
    EXPORT = "export"

    def __str__(self) -> str:
        return self.value


class Stage(str, Enum):
    """Where the photo being worked on is."""

    WAITING = "waiting"  # announced, no step finished yet (models loading, set-up)
    STEPS = "steps"  # optimisation steps
    SAVING = "saving"  # steps done: writing the copy, loading the report's models
    REPORT = "report"  # measuring the protection on held-out models


# A report's cost per face before one has been measured in this run, in face-steps of the attack (the report runs
# each held-out model on each face after every upload degradation): 12.4 measured on the 512 px astronaut with the
# default ensemble and evaluators on a CPU.
REPORT_PRIOR_FACE_STEPS = 12.0
REPORT_CAP = 0.95  # a report running longer than expected holds its part of the bar here until it ends


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def protection_key(settings: Any, devices: Sequence[str]) -> tuple:
    """The settings that change a protected photo's pixels: a photo protected under another key is protected again.

    ``devices`` are this machine's devices, best first (``core.device.available_devices``): the key holds the
    device the attack runs on, so "auto" and the device it resolves to protect alike.
    """
    device = devices[0] if settings.device == "auto" else settings.device
    return (
        settings.preset,
        settings.steps,
        settings.dssim_budget,
        tuple(settings.ensemble),
        settings.blur,
        settings.jpeg,
        settings.resize,
        device,  # a GPU runs the preset's GPU form (more steps, bfloat16)
    )


@dataclass
class _Photo:
    key: str
    faces: int
    steps: int
    done: bool = False


class RunProgress:
    """Progress of one run over ``photos`` (``(key, faces)``; faces may be a guess until the photo starts).

    ``steps`` is each photo's number of optimisation steps; ``measure`` whether a report follows each photo;
    ``clock`` returns seconds (monotonic), replaceable in tests.
    """

    def __init__(
        self,
        photos: list[tuple[str, int]],
        steps: int,
        measure: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.photos = [_Photo(key, max(1, faces), max(1, steps)) for key, faces in photos]
        self._index = {p.key: p for p in self.photos}
        self.measure = measure
        self.current: _Photo | None = None
        self.stage = Stage.WAITING
        self.step = 0
        self._paused_total = 0.0
        self._paused_since: float | None = None
        self._last_event = self._active()
        self._report_started = 0.0
        # measured in this run (active seconds)
        self._step_seconds = 0.0
        self._step_units = 0.0  # face-steps the seconds above were spent on
        self._first_step_seconds = 0.0  # each photo's first step carries set-up: kept apart
        self._first_step_units = 0.0
        self._report_seconds = 0.0
        self._report_faces = 0
        self._shown = 0.0

    # -- the clock without pauses ------------------------------------------------------------------
    def _active(self) -> float:
        now = self._clock()
        paused = self._paused_total + (now - self._paused_since if self._paused_since is not None else 0.0)
        return now - paused

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    def pause(self) -> None:
        if self._paused_since is None:
            self._paused_since = self._clock()

    def resume(self) -> None:
        if self._paused_since is not None:
            self._paused_total += self._clock() - self._paused_since
            self._paused_since = None

    # -- events ----------------------------------------------------------------------------------
    def photo_started(self, key: str, faces: int) -> None:
        photo = self._index.get(key)
        if photo is None:  # not planned (a preview of another photo): track it anyway
            photo = _Photo(key, max(1, faces), self.photos[0].steps if self.photos else 1)
            self.photos.append(photo)
            self._index[key] = photo
        photo.faces = max(1, faces)
        self.current, self.stage, self.step = photo, Stage.WAITING, 0
        self._last_event = self._active()

    def step_done(self, key: str, step: int, total: int) -> None:
        photo = self._index.get(key)
        if photo is None or photo is not self.current:
            return
        now = self._active()
        seconds, units = max(0.0, now - self._last_event), photo.faces * max(0, step - self.step)
        if self.step == 0:
            self._first_step_seconds += seconds
            self._first_step_units += units
        else:
            self._step_seconds += seconds
            self._step_units += units
        self._last_event = now
        photo.steps = max(1, total)
        self.step = min(step, photo.steps)
        self.stage = Stage.SAVING if self.step >= photo.steps else Stage.STEPS

    def report_started(self, key: str) -> None:
        photo = self._index.get(key)
        if photo is None or photo is not self.current:
            return
        self.stage = Stage.REPORT
        self.step = photo.steps
        self._report_started = self._active()

    def photo_finished(self, key: str) -> None:
        photo = self._index.get(key)
        if photo is None:
            return
        if photo is self.current and self.stage == Stage.REPORT:
            self._report_seconds += max(0.0, self._active() - self._report_started)
            self._report_faces += photo.faces
        photo.done = True
        if photo is self.current:
            self.current, self.stage, self.step = None, Stage.WAITING, 0

    # -- measured speed --------------------------------------------------------------------------
    @property
    def seconds_per_face_step(self) -> float | None:
        """Active seconds per step per face, measured in this run (each photo's set-up step left out when it can)."""
        if self._step_units:
            return self._step_seconds / self._step_units
        if self._first_step_units:
            return self._first_step_seconds / self._first_step_units
        return None

    @property
    def report_seconds_per_face(self) -> float | None:
        """Active seconds of report per face, measured in this run; a prior from the step speed before that."""
        if self._report_faces:
            return self._report_seconds / self._report_faces
        rate = self.seconds_per_face_step
        return None if rate is None else rate * REPORT_PRIOR_FACE_STEPS

    # -- answers ---------------------------------------------------------------------------------
    def _costs(self, photo: _Photo) -> tuple[float, float]:
        """Seconds (or face-steps before any speed is known) of the photo's steps and of its report."""
        rate = self.seconds_per_face_step
        report_rate = self.report_seconds_per_face
        if rate is None:
            return photo.faces * photo.steps, (photo.faces * REPORT_PRIOR_FACE_STEPS if self.measure else 0.0)
        return photo.faces * photo.steps * rate, (photo.faces * report_rate if self.measure else 0.0)

    def _current_done(self, photo: _Photo) -> float:
        steps_cost, report_cost = self._costs(photo)
        if self.stage in (Stage.WAITING, Stage.STEPS):
            return steps_cost * self.step / photo.steps
        if self.stage == Stage.SAVING:
            return steps_cost
        elapsed = self._active() - self._report_started
        return steps_cost + min(elapsed, REPORT_CAP * report_cost)

    def _totals(self) -> tuple[float, float]:
        done = total = 0.0
        for photo in self.photos:
            cost = sum(self._costs(photo))
            total += cost
            if photo.done:
                done += cost
            elif photo is self.current:
                done += self._current_done(photo)
        return done, total

    def fraction(self) -> float:
        """How far the whole run is, 0..1; never smaller than an earlier answer."""
        done, total = self._totals()
        if total > 0:
            self._shown = max(self._shown, min(1.0, done / total))
        return self._shown

    def eta_seconds(self) -> float | None:
        """Active seconds still needed; None until the speed of a step has been measured."""
        if self.seconds_per_face_step is None:
            return None
        done, total = self._totals()
        return max(0.0, total - done)

    def position(self) -> str:
        """Where the run is, for the label beside the bar: photo n of N, and its stage."""
        if self.current is None:
            finished = sum(p.done for p in self.photos)
            return f"{finished} of {len(self.photos)} photos done" if self.photos else ""
        n = self.photos.index(self.current) + 1
        where = f"Photo {n} of {len(self.photos)}" if len(self.photos) > 1 else Path(self.current.key).name
        if self.stage == Stage.REPORT:
            return f"{where} · report: measuring on held-out models"
        if self.stage == Stage.SAVING:
            return f"{where} · writing the copy" + (", preparing the report" if self.measure else "")
        return f"{where} · step {self.step} of {self.current.steps}"

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        text = "ETA: measuring speed…" if eta is None else f"ETA {format_eta(eta)}"
        return text + (" (paused)" if self.paused else "")
