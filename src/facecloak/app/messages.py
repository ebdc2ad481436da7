"""What the window says, as plain functions of the album's state (no widgets): one place to keep the wording true."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .model import DETECTING, ERROR, NO_FACE, PRESET_NAMES, PROTECTED, PROTECTING, QUEUED, PhotoEntry
from .worker import NOT_SAVED

SKIPPED_EXISTING = "skipped (output exists)"
SUMMARY_ORDER = (PROTECTED, NOT_SAVED, SKIPPED_EXISTING, NO_FACE, ERROR)


def run_summary_text(counts: dict[str, int], cancelled: bool) -> str:
    """The status-bar line at the end of a run: every photo counted as what really happened to it."""
    kinds = [k for k in SUMMARY_ORDER if counts.get(k)] + sorted(k for k in counts if k not in SUMMARY_ORDER)
    text = ", ".join(f"{counts[k]} {k}" for k in kinds if counts[k]) or "nothing done"
    return ("Cancelled: " if cancelled else "Done: ") + text


def existing_outputs_text(targets: list[Path]) -> str:
    """The question asked before a run when protected copies with the same names exist already."""
    from facecloak.core.image import display_name

    n = len(targets)
    names = ", ".join(display_name(t) for t in targets[:5]) + (f" and {n - 5} more" if n > 5 else "")
    folders = {t.parent for t in targets}
    where = f" in {folders.pop()}" if len(folders) == 1 else ""
    example = display_name(targets[0].with_name(f"{targets[0].stem} (2){targets[0].suffix}"))
    return (
        f"{n} of the protected copies this run would write exist{'s' if n == 1 else ''} already{where}: {names}.\n\n"
        f"Overwrite them, keep both (the new copy gets a numbered name such as {example}), "
        "or skip these photos? Originals are never changed."
    )


def report_placeholder(entry: PhotoEntry, waiting_in_run: bool) -> str:
    """The report panel's text for a photo without a report, saying what is happening to it and what to do."""
    name = entry.name
    if entry.status == PROTECTING:
        return f"Protecting {name}… its report appears here once it has been measured."
    if entry.status == DETECTING or (entry.status == QUEUED and entry.faces is None and not entry.message):
        return f"Finding faces in {name}…"
    if entry.status == NO_FACE:
        return f"No face found in {name}: there is nothing to protect."
    if entry.status == ERROR:
        if entry.pinned_protected is not None:
            return f"{entry.message}. Use File > Export protected to write it to another folder."
        if entry.faces:
            return f"{entry.message}. Protect all tries it again."
        return f"{entry.message}. Remove it from the album with Delete (or right-click it)."
    if entry.status == PROTECTED:
        return "No report for this photo (measuring was off in Settings)."
    if waiting_in_run:
        return f"{name} is waiting for its turn in this run."
    if entry.message == "cancelled":
        return f"{name} was cancelled before it was done: Protect all starts it again."
    return f"{name} is not protected yet: Protect all (Ctrl+Enter) protects it and shows how well it worked here."


def still_matched(report: Any) -> bool:
    """Whether a held-out recogniser still matches a protected face as posted (no degradation)."""
    return any(c.transform == "none" and c.matched_after for c in getattr(report, "cells", []))


def next_step_text(used_preset: str, still_matched_now: bool) -> str:
    """What to do after a photo protected with ``used_preset``: the next stronger preset, or what else there is."""
    if not still_matched_now:
        return (
            f"Protected with the {used_preset} preset. To try other settings, change them under Settings and "
            "press Protect again."
        )
    order = list(PRESET_NAMES)
    stronger = order[order.index(used_preset) + 1] if used_preset in order[:-1] else None
    if stronger is not None:
        return (
            f"Still matched with the {used_preset} preset: choose {stronger} under Settings > Preset, "
            "then press Protect again."
        )
    return (
        f"Still matched with {used_preset}, the strongest preset. You can raise Steps or the DSSIM budget under "
        "Settings > Expert (a stronger but more visible change) and Protect again, or leave this photo unposted."
    )
