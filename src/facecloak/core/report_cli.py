"""``facecloak report PHOTO --against CLEAN...``: the protection report of a photo already protected."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", type=Path, metavar="PROTECTED", help="the protected photo")
    parser.add_argument(
        "--against",
        nargs="+",
        type=Path,
        required=True,
        metavar="CLEAN",
        help="clean photos of the same person (required); one with the protected photo's size is taken as its original",
    )
    parser.add_argument(
        "--evaluators",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="models that measure (default: the manifest's held-out models)",
    )
    parser.add_argument(
        "--ensemble",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="models the photo was protected with (default: the manifest's ensemble)",
    )
    parser.add_argument(
        "--full-sweep",
        action="store_true",
        help="measure every blur, JPEG and resize of the grid, not the default few views (slower; default: off)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON here (default: none)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the models run; auto takes CUDA, then Apple MPS, then the CPU (default: auto)",
    )


def _marker_notes(protected: Path, original: Path, others: list[Path]) -> None:
    """Say which of the photos carry FaceCloak's marker: the protected one should, the clean ones must not."""
    from .export import facecloak_marker
    from .image import display_path

    marker = facecloak_marker(protected)
    if marker is not None:
        print(f"{display_path(protected)}: carries the FaceCloak marker ({marker}): a copy FaceCloak protected")
    else:
        print(f"{display_path(protected)}: no FaceCloak marker (not written by FaceCloak, or its metadata was removed)")
    marker = facecloak_marker(original)
    if marker is not None:
        print(
            f"warning: the original {display_path(original)} is itself a protected copy ({marker}): the report "
            "measures one protected copy against another, not against the clean photo",
            file=sys.stderr,
        )
    for other in others:
        marker = facecloak_marker(other)
        if marker is not None:
            print(
                f"warning: the clean photo {display_path(other)} is a protected copy ({marker}): links to it are "
                "not links to a clean photo",
                file=sys.stderr,
            )


def run(args: argparse.Namespace) -> int:
    from .detect import FaceDetector
    from .image import ImageLoadError, load_error_message, load_image
    from .report import LIMITATIONS, ProtectionEvaluator
    from .zoo.manifest import Roles
    from .zoo.registry import ModelNotReady

    path = args.photo
    try:
        protected = load_image(path)
        clean = []
        for path in args.against:
            clean.append(load_image(path))
    except ImageLoadError as err:
        print(f"cannot read: {load_error_message(path, err)}", file=sys.stderr)
        return 2
    original_index = next((i for i, c in enumerate(clean) if c.shape == protected.shape), None)
    if original_index is None:
        print("none of --against has the protected photo's size: pass its original", file=sys.stderr)
        return 2
    original = clean[original_index]
    others = [p for i, p in enumerate(args.against) if i != original_index]
    _marker_notes(args.photo, args.against[original_index], others)
    detector = FaceDetector()
    faces = detector.detect(original)
    if not faces:
        print(f"no face found in {args.against[original_index]}", file=sys.stderr)
        return 1
    references, reference_faces = [], []
    for i, photo in enumerate(clean):
        if i == original_index:
            continue
        found = detector.detect(photo)
        if found:
            references.append(photo)
            reference_faces.append(found[0])
    try:
        evaluator = ProtectionEvaluator(args.evaluators, device=args.device)
    except (ModelNotReady, ValueError) as err:
        print(f"cannot evaluate: {err}", file=sys.stderr)
        return 2
    report = evaluator.report(
        original,
        protected,
        faces[:1],
        args.ensemble or list(Roles.load().ensemble),
        references,
        reference_faces,
        full_sweep=args.full_sweep,
        export_file=args.photo,
    )
    print_report(report)
    if evaluator.missing:
        print(f"not evaluated (not converted): {', '.join(evaluator.missing)}")
    print(f"\n{LIMITATIONS}")
    if args.json:
        from .files import replace_atomically

        text = report.to_json()
        replace_atomically(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 0


def print_report(report) -> None:
    """The report for a terminal: the headline, each threat model per evaluator, quality."""
    from .report import OWN_ORIGINAL, SEARCH, THREAT_MODELS, VERIFICATION, basis_sentence, effort_sentence

    print(report.headline)
    print(basis_sentence(report))
    print()
    for threat in (SEARCH, VERIFICATION, OWN_ORIGINAL):
        print(THREAT_MODELS[threat])
        for cell in report.threat_cells(threat):
            print("  " + threat_line(cell))
    print(
        f"\nown original, match rate at FAR 1e-3 over {len(report.evaluators)} held-out models x "
        f"{len(report.transforms)} views: {report.match_rate_before * 100:.0f}% before -> "
        f"{report.match_rate_after * 100:.0f}% after"
    )
    for ref in report.faces[0].references:
        worst = "as posted" if ref.worst_transform == "none" else f"after {ref.worst_transform}"
        print(
            f"vs other clean photo #{ref.reference + 1} on {ref.evaluator}: {ref.similarity_before:.3f} before, "
            f"{ref.similarity_after:.3f} after as posted, worst {ref.similarity_after_worst:.3f} {worst} "
            f"(threshold {ref.threshold_far_1e3:.3f})"
        )
    q = report.quality
    export = q.get("export_dssim_max")
    print(
        f"\nquality: face DSSIM {q['face_dssim_max']:.4f} (the protection's own change, against the original "
        f"encoded like this file: {q.get('reference_encoding')}), SSIM {q['ssim']:.4f}, PSNR {q['psnr']:.1f} dB"
        + (f"; the file's own re-encoding costs face DSSIM {export:.4f}" if export is not None else "")
    )
    print(f"views: {', '.join(report.transforms)}")
    print(f"attack ensemble: {', '.join(report.ensemble)}; held-out evaluators: {', '.join(report.evaluators)}")
    if effort := effort_sentence(report):
        print(effort)


def threat_line(cell) -> str:
    """One evaluator's verdict under one threat model, e.g. ``insightface_mbf: similarity 0.41 after jpeg q50 ...``."""
    from .report import SEARCH

    where = "as posted" if cell.transform == "none" else f"after {cell.transform}"
    line = f"{cell.evaluator:20s} similarity {cell.score:.3f} {where} (unprotected {cell.score_before:.3f}"
    line += f", FAR 1e-3 threshold {cell.threshold:.3f}): "
    if cell.threat == SEARCH:
        if cell.found_up_to:
            return line + f"still found among {cell.found_up_to:,} other faces"
        return line + "not found among 1,000 other faces"
    return line + ("still matched" if cell.matched else "not matched")
