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
    from .protect import default_ensemble
    from .report import LIMITATIONS, ProtectionEvaluator
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
        original, protected, faces[:1], args.ensemble or default_ensemble(), references, reference_faces
    )
    print(report.summary)
    print(
        f"match rate at FAR 1e-3 over {len(report.evaluators)} held-out models x {len(report.transforms)} "
        f"degradations: {report.match_rate_before * 100:.0f}% before -> {report.match_rate_after * 100:.0f}% after"
    )
    worst = report.worst_after
    if worst is not None:
        state = "still matched" if worst.matched_after else "not matched"
        print(
            f"worst case: {worst.evaluator} after {worst.transform}: similarity {worst.similarity_after:.3f} "
            f"(threshold {worst.threshold_far_1e3:.3f}, {state})"
        )
    print("\nevaluator            none     worst transform")
    for name in report.evaluators:
        cells = [c for c in report.faces[0].cells if c.evaluator == name]
        none = next(c for c in cells if c.transform == "none")
        bad = max(cells, key=lambda c: c.margin_after)
        print(f"{name:20s} {none.similarity_after:.3f}    {bad.similarity_after:.3f} ({bad.transform})")
    for ref in report.faces[0].references:
        print(
            f"vs other clean photo #{ref.reference + 1} on {ref.evaluator}: {ref.similarity_before:.3f} before, "
            f"{ref.similarity_after:.3f} after (threshold {ref.threshold_far_1e3:.3f})"
        )
    q = report.quality
    print(f"\nquality: SSIM {q['ssim']:.4f}, PSNR {q['psnr']:.1f} dB, face DSSIM {q['face_dssim_max']:.4f}")
    print(f"attack ensemble: {', '.join(report.ensemble)}; held-out evaluators: {', '.join(report.evaluators)}")
    if evaluator.missing:
        print(f"not evaluated (not converted): {', '.join(evaluator.missing)}")
    print(f"\n{LIMITATIONS}")
    if args.json:
        args.json.write_text(report.to_json())
    return 0
