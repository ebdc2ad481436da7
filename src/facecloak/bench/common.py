"""Benchmarks behind ``facecloak bench``: they print numbers and, given ``--results``, update that results page.

Every path is explicit. ``--data`` names the photos (default: the folder in ``$FACECLOAK_DATA``, which holds
``lfw/``, ``lfw_protocol/`` and ``people/``); ``--results`` names the results page (docs/BENCHMARKS.md of a
checkout) whose own section the benchmark replaces, and without it the numbers are only printed; ``bench lfw
--manifest`` names the models.json that stores the measured thresholds. Nothing is read from the working directory
or written into the installed package by default.

Each benchmark owns one section of the page, between ``<!-- key:start -->`` and ``<!-- key:end -->``; a section
that is missing is created at the end of its group (``## Protection by preset``, ``## Speed``, ...).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.device import configure_cpu_threads
from ..core.files import replace_atomically

DATA_ENV = "FACECLOAK_DATA"
DATA_VARIABLE = f"${DATA_ENV}"  # how commands on the results page name the data folder
NEW_PAGE = "# FaceCloak benchmarks\n"

# Groups of the results page, in page order; a missing section is created at the end of its group.
PROTECTION_GROUP = "## Protection by preset"
SPEED_GROUP = "## Speed"
TRANSFER_GROUP = "## Transfer matrix"
THRESHOLDS_GROUP = "## Thresholds: the models on LFW"
_GROUP_OF_KEY = (("protect-", PROTECTION_GROUP), ("transfer-", TRANSFER_GROUP))
_GROUP_OF_KEY += (("speed", SPEED_GROUP), ("album", SPEED_GROUP))
_GROUP_OF_KEY += (("model-speed", SPEED_GROUP), ("lfw", THRESHOLDS_GROUP))

# Options that name where results go: they do not change a number, and their paths are this machine's.
_OUTPUT_OPTIONS = ("--output", "--results", "--manifest", "--crops")
_OUTPUT_FLAGS = ("--write-manifest",)  # the older way to store LFW thresholds, still in stored commands

_HEADING = re.compile(r"^(#{1,6}) ")
_MARKER = re.compile(r"^<!-- (.+):(start|end) -->$")


class BenchInputError(Exception):
    """A benchmark cannot start with what it was given (a missing folder, an unreadable manifest)."""


def reports_input_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a :class:`BenchInputError` into its message on stderr and exit code 2."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except BenchInputError as err:
            print(err, file=sys.stderr)
            return 2

    return wrapper


# --- paths -----------------------------------------------------------------------------------------------------


def env_data_root() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def data_root(given: Path | None) -> Path:
    """The data folder: ``given`` (``--data``), else ``$FACECLOAK_DATA``; a clear error when neither is set."""
    root = given or env_data_root()
    if root is None:
        raise BenchInputError(
            f"no data folder: pass --data DIR or set {DATA_ENV} to a folder holding lfw/, lfw_protocol/ and people/"
        )
    return root


def data_folders(given: Sequence[Path] | None, default_names: Sequence[str]) -> tuple[list[Path], Path | None]:
    """The labelled photo folders a benchmark reads (``--data``, else these names inside ``$FACECLOAK_DATA``), and
    the folder that commands on the results page name ``$FACECLOAK_DATA``."""
    if not given:
        root = data_root(None)
        return [root / name for name in default_names], root
    env = env_data_root()
    if env is not None and all(_inside(folder, env) for folder in given):
        return list(given), env
    try:
        return list(given), Path(os.path.commonpath([str(folder.resolve().parent) for folder in given]))
    except ValueError:  # folders on different drives share no root
        return list(given), None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def portable_path(path: Path | str, root: Path | None) -> str:
    """``path`` as the results page shows it: relative to ``$FACECLOAK_DATA`` when inside ``root``, else ``.../``
    and its name (a path of this machine means nothing elsewhere)."""
    path = Path(path)
    if root is not None and _inside(path, root):
        relative = path.resolve().relative_to(root.resolve()).as_posix()
        return DATA_VARIABLE if relative == "." else f"{DATA_VARIABLE}/{relative}"
    return f".../{path.name}" if path.is_absolute() or len(path.parts) > 1 else str(path)


def _looks_like_path(word: str) -> bool:
    """A path of this machine, not a ``$VARIABLE/...`` already portable nor a JSON argument (``bench tune``)."""
    if word.startswith(("$", "{", "-")):
        return False
    return "/" in word or os.sep in word or word.startswith(("~", "."))


def portable_command(argv: Sequence[str], root: Path | None) -> str:
    """The command line as the results page shows it: no output options, data paths under ``$FACECLOAK_DATA``."""
    words: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        option, has_value, value = word.partition("=")
        if option in _OUTPUT_OPTIONS or word in _OUTPUT_FLAGS:
            index += 1 if has_value or word in _OUTPUT_FLAGS else 2
            continue
        if has_value and option.startswith("--") and _looks_like_path(value):
            word = f"{option}={portable_path(value, root)}"
        elif _looks_like_path(word):
            word = portable_path(word, root)
        words.append(word)
        index += 1
    return " ".join(["facecloak", *words])


def this_command(root: Path | None) -> str:
    """This process's ``facecloak ...`` command, for the results page."""
    return portable_command(sys.argv[1:], root)


# --- the results page ------------------------------------------------------------------------------------------


def _section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def section_group(key: str) -> str | None:
    """The group heading a section belongs under (None: the end of the page)."""
    return next((group for prefix, group in _GROUP_OF_KEY if key.startswith(prefix)), None)


def read_markdown_section(path: Path | None, key: str) -> str:
    """The text between ``<!-- key:start -->`` and ``<!-- key:end -->``, or "" when there is none."""
    start, end = _section_markers(key)
    text = path.read_text() if path is not None and path.is_file() else ""
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


def _group_end(lines: list[str], start: int) -> int:
    """Index of the first line after the group whose heading is ``lines[start]``: the next heading of the same or a
    higher level, outside code fences and generated sections."""
    level = len(_HEADING.match(lines[start]).group(1))
    in_fence = in_section = False
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if line.startswith("```"):
            in_fence = not in_fence
        elif marker := _MARKER.match(line):
            in_section = marker.group(2) == "start"
        elif not in_fence and not in_section and (heading := _HEADING.match(line)) and len(heading.group(1)) <= level:
            return index
    return len(lines)


def _insert_section(text: str, block: str, group: str | None) -> str:
    """``text`` with ``block`` added at the end of ``group`` (created at the end of the page when missing)."""
    lines = text.rstrip().splitlines()
    if group is None or group not in lines:
        heading = [group, ""] if group is not None else []
        return "\n".join([*lines, "", *heading, block]) + "\n"
    end = _group_end(lines, lines.index(group))
    head, rest = lines[:end], lines[end:]
    while head and not head[-1].strip():
        head.pop()
    return "\n".join([*head, "", block, *(["", *rest] if rest else [])]) + "\n"


def update_markdown_section(path: Path, key: str, body: str) -> None:
    """Replace the block between ``<!-- key:start -->`` and ``<!-- key:end -->``; when the page has none, add it at
    the end of its group (:func:`section_group`). The rest of the page is left as it is."""
    start, end = _section_markers(key)
    block = f"{start}\n{body.rstrip()}\n{end}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        text = path.read_text() if path.is_file() else NEW_PAGE
        if start in text and end in text:
            before, rest = text.split(start, 1)
            _, after = rest.split(end, 1)
            text = before + block + after
        else:
            text = _insert_section(text, block, section_group(key))
        # whole-file replace: a benchmark killed mid-write must not leave a truncated page
        replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_section(results: Path | None, key: str, body: str) -> None:
    """Update section ``key`` of the results page, or say how to when no page was named."""
    if results is None:
        print("(results page not updated: pass --results docs/BENCHMARKS.md to write this section)")
        return
    update_markdown_section(results, key, body)
    print(f"updated section '{key}' of {results}")


def check_results_page(results: Path | None) -> None:
    """Refuse, before any work, a results page that cannot be one."""
    if results is not None and results.is_dir():
        raise BenchInputError(f"--results {results} is a folder: name the page itself, e.g. docs/BENCHMARKS.md")


def write_json(path: Path, data: object) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def machine_line(threads: bool = True) -> str:
    """``threads=False`` for tables whose numbers do not depend on the thread count and may be re-rendered by
    another process (the LFW table, rebuilt from the manifest)."""
    cpu = platform.processor() or platform.machine()
    line = f"{cpu}, torch {torch.__version__}"
    return f"{line}, {torch.get_num_threads()} thread(s)" if threads else line


def _ready_models(names: list[str] | None) -> list[str]:
    from ..core.zoo.manifest import load_manifest
    from ..core.zoo.registry import cache_status

    manifest = load_manifest()
    chosen = names or list(manifest)
    ready = [n for n in chosen if cache_status(manifest[n]).ready]
    for name in sorted(set(chosen) - set(ready)):
        print(f"skipping {name}: {cache_status(manifest[name]).message}", file=sys.stderr)
    return ready


# --- bench lfw -------------------------------------------------------------------------------------------------


def _read_manifest_file(path: Path) -> dict:
    """The JSON of a models.json, checked to be one."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BenchInputError(f"--manifest {path}: not a readable models.json ({err})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise BenchInputError(f'--manifest {path}: not a models.json (no "models" list)')
    return raw


def store_verification(path: Path, results: dict[str, dict], command: str) -> list[str]:
    """Store each model's LFW numbers in the models.json at ``path`` (atomically); the names it does not list."""
    raw = _read_manifest_file(path)
    stored = set()
    for entry in raw["models"]:
        if entry.get("name") in results:
            entry["verification"] = results[entry["name"]] | {"command": command}
            stored.add(entry["name"])
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8"))
    return sorted(set(results) - stored)


@reports_input_errors
def run_lfw_benchmark(args: argparse.Namespace) -> int:
    from ..core.detect import FaceDetector
    from ..core.zoo.manifest import load_manifest
    from ..core.zoo.registry import load_model
    from .verification import build_pair_set, evaluate_model

    root = data_root(args.data)
    lfw_dir, pairs_file = root / "lfw", root / "lfw_protocol" / "pairs.txt"
    if not lfw_dir.is_dir() or not pairs_file.is_file():
        raise BenchInputError(f"LFW not found under {root} (expected lfw/ and lfw_protocol/pairs.txt)")
    if args.manifest is not None:
        _read_manifest_file(args.manifest)  # before an hour of work, not after
    check_results_page(args.results)
    configure_cpu_threads()
    names = _ready_models(args.models)
    if not names:
        raise BenchInputError("no model is ready: run 'facecloak models --build'")
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
        results[name] = result.to_dict()
        print(
            f"{name}: accuracy {result.accuracy * 100:.2f}% (reference {_claimed(manifest[name])}), "
            f"AUC {result.auc:.4f}, thr@FAR1e-2 {result.threshold_far_1e2:.3f}, thr@FAR1e-3 "
            f"{result.threshold_far_1e3:.3f}, TAR@FAR1e-3 {result.tar_far_1e3 * 100:.1f}% "
            f"({time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    if args.output:
        write_json(args.output, results)
    if args.manifest is None:
        print("thresholds not stored: pass --manifest resources/models.json (of a checkout) to store them")
    else:
        missing = store_verification(args.manifest, results, this_command(root))
        print(f"stored in {args.manifest}" + (f"; not listed there: {', '.join(missing)}" if missing else ""))
    table = lfw_table(load_manifest(args.manifest))
    print("\n" + table)
    write_section(args.results, "lfw", table)
    return 0


def _claimed(spec) -> str:
    claimed = spec.reference_lfw_accuracy
    return "not stated" if claimed is None else f"{claimed * 100:.1f}%"


def _stored_command(command: str) -> str:
    """A command stored in the manifest, as the page shows it: its ``--data`` (LFW's root) is ``$FACECLOAK_DATA``."""
    words = command.split()[1:] if command.startswith("facecloak ") else command.split()
    root = next((Path(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "--data"), None)
    if root is not None and str(root).startswith("$"):
        root = None
    return portable_command(words, root)


def lfw_table(manifest: dict) -> str:
    """The LFW table of every model measured so far, from the manifest (one source of truth)."""
    lines = [
        "### LFW verification of the model zoo",
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
            f"| {r.pairs_same} / {r.pairs_different} | `{_stored_command(r.command)}` |"
        )
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------------------------

_RESULTS_HELP = (
    "results page whose section this benchmark replaces, e.g. docs/BENCHMARKS.md of a checkout "
    "(default: none, the numbers are only printed)"
)


def add_data_argument(parser: argparse.ArgumentParser, help_text: str, many: bool = False) -> None:
    parser.add_argument("--data", type=Path, nargs="+" if many else None, default=None, metavar="DIR", help=help_text)


def add_labelled_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: folders of labelled photos (one subfolder per person), lfw/ and people/ by default."""
    add_data_argument(
        parser,
        f"labelled photo folders, one subfolder of photos per person (default: lfw/ and people/ of ${DATA_ENV}; "
        "one of the two must be set)",
        many=True,
    )


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=None, metavar="BENCHMARKS_MD", help=_RESULTS_HELP)


def _add_lfw_arguments(lfw: argparse.ArgumentParser) -> None:
    add_data_argument(
        lfw, f"folder holding lfw/ and lfw_protocol/pairs.txt (default: ${DATA_ENV}; one of the two must be set)"
    )
    lfw.add_argument("--models", nargs="*", help="models to measure (default: every ready model)")
    lfw.add_argument(
        "--pairs", type=int, default=None, help="use only the first N same-person pairs (default: all of them)"
    )
    lfw.add_argument("--impostors", type=int, default=50_000, help="different-person pairs to sample (default: 50000)")
    lfw.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="MODELS_JSON",
        help="store the measured accuracy and thresholds in this models.json, e.g. resources/models.json of a "
        "checkout (default: none, nothing is stored)",
    )
    lfw.add_argument("--output", type=Path, default=None, help="write the results as JSON here (default: none)")
    add_results_argument(lfw)


def add_bench_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``facecloak bench`` and its subcommands on the command line's ``subparsers``."""
    from . import protect, speed, transfer, tune

    bench = subparsers.add_parser(
        "bench", help="benchmarks: print numbers; --results PAGE updates that page's section (docs/BENCHMARKS.md)"
    )
    sub = bench.add_subparsers(dest="bench", required=True)
    commands: list[tuple[str, str, Callable, Callable]] = [
        ("lfw", "LFW verification of each model (accuracy, AUC, thresholds)", _add_lfw_arguments, run_lfw_benchmark),
        (
            "protect",
            "protection on labelled photos, held-out evaluators",
            protect.add_arguments,
            protect.run_protect_benchmark,
        ),
        (
            "tune",
            "compare attack settings on tuning judges (never the evaluators)",
            tune.add_arguments,
            tune.run_tune_benchmark,
        ),
        (
            "transfer",
            "transfer matrix: protection on models left out of the attack (never the evaluators)",
            transfer.add_arguments,
            transfer.run_transfer_benchmark,
        ),
        (
            "album",
            "album warm starts: time and protection, cold vs warm",
            protect.add_album_arguments,
            protect.run_album_benchmark,
        ),
        (
            "speed",
            "seconds per face to protect one real photo per preset, stage by stage, on the CPU or a GPU",
            speed.add_speed_arguments,
            speed.run_speed_benchmark,
        ),
        (
            "models",
            "time of forward+backward per model, 1 face and a batch, on the CPU or a GPU",
            speed.add_model_speed_arguments,
            speed.run_model_speed_benchmark,
        ),
    ]
    for name, help_text, add_arguments, run in commands:
        parser = sub.add_parser(name, help=help_text)
        add_arguments(parser)
        parser.set_defaults(func=run)
