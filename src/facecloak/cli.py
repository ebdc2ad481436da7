"""``facecloak``: the command-line interface over the engine (:mod:`facecloak.core`) and the benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_models(args: argparse.Namespace) -> int:
    from .core.zoo.manifest import load_manifest, load_roles
    from .core.zoo.registry import build_all, cache_status

    manifest = load_manifest()
    if args.fetch_lpips:
        from .core.perceptual import fetch_alexnet

        try:
            print(f"LPIPS backbone: {fetch_alexnet()} (torchvision hash checked)")
        except (OSError, RuntimeError) as err:  # no network, or a download that failed its hash check
            print(f"could not fetch LPIPS's AlexNet backbone: {err}", file=sys.stderr)
            return 1
    if args.build is not None:
        names = args.build or list(manifest)
        unknown = [n for n in names if n not in manifest]
        if unknown:
            print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(manifest)}", file=sys.stderr)
            return 2
        failures: list[str] = []

        def on_error(name: str, err: Exception) -> None:
            failures.append(name)
            print(f"  {name}: FAILED: {err}", file=sys.stderr)

        start = time.perf_counter()
        build_all(names, progress=lambda msg: print(f"  {msg}", flush=True), on_error=on_error)
        print(f"built in {time.perf_counter() - start:.0f} s")
        if failures:
            return 1
    roles = load_roles()
    role_of = {n: "tuning" for n in roles.get("tuning", [])}
    role_of |= {n: "ensemble" for n in roles["ensemble"]} | {n: "evaluator" for n in roles["evaluators"]}
    rows, records = [], []
    for spec in manifest.values():
        status = cache_status(spec)
        v = spec.verification
        records.append(
            {
                "name": spec.name,
                "role": role_of.get(spec.name, "-"),
                "input": list(spec.input_size),
                "dim": spec.embedding_dim,
                "lfw": v.__dict__ if v else None,
                "licence": spec.model_licence,
                "ready": status.ready,
                "status": status.message,
            }
        )
        rows.append(
            [
                spec.name,
                role_of.get(spec.name, "-"),
                f"{spec.input_size[1]}x{spec.input_size[0]}",
                str(spec.embedding_dim),
                f"{v.accuracy * 100:.1f}%" if v else "not measured",
                f"{v.threshold_far_1e2:.3f}" if v else "-",
                f"{v.threshold_far_1e3:.3f}" if v else "-",
                spec.model_licence.split(" ")[0],
                "ready" if status.ready else status.message,
            ]
        )
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        header = ["model", "role", "input", "dim", "LFW acc", "thr@FAR1e-2", "thr@FAR1e-3", "licence", "cache"]
        _print_table(rows, header)
        ready = sum(r["ready"] for r in records)
        print(f"\n{ready} of {len(records)} models ready.", end="")
        print("" if ready == len(records) else " Build the rest with 'facecloak models --build'.")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from .core.detect import DetectorConfig, FaceDetector
    from .core.image import ImageLoadError, display_path, load_error_message, load_image

    detector = FaceDetector(DetectorConfig(min_face_size=args.min_face_size))
    failed = 0
    for path in args.photos:
        try:
            photo = load_image(path)
        except ImageLoadError as err:
            print(load_error_message(path, err), file=sys.stderr)
            failed += 1
            continue
        faces = detector.detect(photo)
        print(f"{display_path(path)}: {photo.shape[-1]}x{photo.shape[-2]}, {len(faces) or 'no'} face(s)")
        for face in faces:
            x0, y0, x1, y1 = face.box
            print(f"  box ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) score {face.score:.3f}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecloak", description="Protect photos from face recognition.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the face-recognition models and their cache state")
    models.add_argument(
        "--build", nargs="*", metavar="NAME", help="fetch, verify and convert these models (no NAME: all of them)"
    )
    models.add_argument(
        "--fetch-lpips",
        action="store_true",
        help="download LPIPS's AlexNet backbone into the torch cache (needs internet; optional extra measure; "
        "default: off)",
    )
    models.add_argument("--json", action="store_true", help="machine-readable output (default: off, a table)")
    models.set_defaults(func=cmd_models)

    detect = sub.add_parser("detect", help="find faces in photos")
    detect.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo files")
    detect.add_argument(
        "--min-face-size",
        type=int,
        default=40,
        metavar="PIXELS",
        help="smallest face to report, its shorter side in pixels of the photo (default: 40)",
    )
    detect.set_defaults(func=cmd_detect)

    from .core import batch

    protect = sub.add_parser("protect", help="write protected copies of photos (files and folders)")
    batch.add_protect_arguments(protect)
    protect.set_defaults(func=batch.run_protect)

    from .core import report_cli

    report = sub.add_parser("report", help="protection report of a protected photo against clean ones")
    report_cli.add_arguments(report)
    report.set_defaults(func=report_cli.run)

    from .bench import add_bench_parsers

    add_bench_parsers(sub)

    from .train import surrogate as train_surrogate

    surrogate = sub.add_parser(
        "train-surrogate", help="fine-tune a model into a slightly robust surrogate whose attacks transfer better"
    )
    train_surrogate.add_arguments(surrogate)
    surrogate.set_defaults(func=train_surrogate.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
