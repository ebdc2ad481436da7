"""Batch protection of albums from the command line: ``facecloak protect``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_protect_arguments(protect: argparse.ArgumentParser) -> None:
    protect.add_argument("paths", nargs="+", type=Path)
    protect.add_argument("-o", "--output", type=Path, required=True, help="folder for the protected copies")
    protect.add_argument("--preset", choices=["low", "mid", "high"], default="mid")
    protect.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    protect.add_argument("--suffix", default="_cloaked")
    protect.add_argument("--overwrite", action="store_true", help="replace existing protected copies")
    protect.add_argument("--ensemble", nargs="+", default=None, help="attack models (default: manifest roles)")
    protect.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def run_protect(args: argparse.Namespace) -> int:
    from .attack import preset
    from .protect import Protector, iter_photos
    from .zoo.registry import ModelNotReady

    overrides = {"steps": args.steps} if args.steps is not None else {}
    config = preset(args.preset, **overrides)
    photos = iter_photos(args.paths)
    if not photos:
        print("no photos found in the given paths", file=sys.stderr)
        return 1
    try:
        protector = Protector(config, ensemble=args.ensemble, device=args.device)
    except (ModelNotReady, ValueError) as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    names = ", ".join(protector.ensemble_names)
    print(f"protecting {len(photos)} photo(s) on {protector.device} with ensemble {names}")
    counts: dict[str, int] = {}
    for i, path in enumerate(photos, 1):
        try:
            outcome = protector.protect_file(path, args.output, suffix=args.suffix, overwrite=args.overwrite)
        except Exception as err:  # one bad photo must not stop the album
            print(f"[{i}/{len(photos)}] {path}: error: {err}", file=sys.stderr)
            counts["error"] = counts.get("error", 0) + 1
            continue
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        detail = outcome.message or (
            f"{outcome.faces} face(s), DSSIM {max(outcome.face_dssim):.4f}, {outcome.seconds:.1f} s -> {outcome.output}"
        )
        stream = sys.stderr if outcome.status == "error" else sys.stdout
        print(f"[{i}/{len(photos)}] {path}: {outcome.status}: {detail}", file=stream, flush=True)
    print("done: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if counts.get("error") else 0


