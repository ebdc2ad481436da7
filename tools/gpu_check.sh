#!/usr/bin/env bash
# The attack on a real GPU in one prepared call (issue 26): prepare here, run on the GPU machine, rehearse here.
#
#   tools/gpu_check.sh prepare    here: the wheels the GPU machine lacks and the two small models it needs, into
#                                 .gpu_check/ (ignored by git), and the size of everything that would travel
#   tools/gpu_check.sh device     on the GPU machine (Python 3.12, torch, no registry): install the wheels offline,
#                                 run tests/test_cuda.py and the speed benchmarks with random weights, logs to $OUT
#   tools/gpu_check.sh rehearse   here: the device steps on the CPU with a tiny configuration, logs to $OUT
#                                 (default /tmp/gpu_check_rehearsal)
#
# The device call (the device tool's `run`, about 7 minutes at most):
#   command: bash tools/gpu_check.sh device        carry: [".gpu_check"]        timeout_s: 540
# It writes gpu_check.log, env.txt, tests.log, speed.log, speed.json, speed4.log, models.log and summary.txt into
# $OUT (8 files, the most that come back) and prints the summary last.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAGE=.gpu_check
WHEELS=$STAGE/wheels
CACHE=$STAGE/cache
SMALL_MODELS="mobileface facesdk_mbf"  # tests/test_cuda.py's surrogates: 6 MB together
LIMIT_MIB=60                           # of the 64 MiB that may travel, leaving room for the tree growing
BUDGET_S=450                           # the device steps stop starting after this (the call must end under 8 min)
# What the engine needs and the GPU machine's image lacks (its package list: .library/device/KINDS.md). Each
# wheel is taken without dependencies; `prepare` checks that every dependency they declare is on the machine.
PACKAGES="kornia kornia_rs facenet-pytorch piq platformdirs pillow_heif lpips tflite"
# Packages the machine has, perhaps older than a carried wheel asks for (pillow_heif 1.9 wants pillow >= 13):
# carried too, and installed there only when its own version does not satisfy the carried wheels.
OPTIONAL="pillow"
DEVICE_HAS="numpy scipy scikit-image opencv-python-headless onnx onnxruntime h5py protobuf safetensors pillow tqdm
torch torchvision requests packaging flatbuffers pytest hypothesis typing-extensions filelock"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64"

say() { printf '%s\n' "$*"; }
die() { say "gpu_check: $*" >&2; exit 2; }

# --- prepare (here) ----------------------------------------------------------------------------------------------

pinned() {  # NAME==VERSION of each of $PACKAGES as installed here: the versions the tests run with
    local python=$1
    "$python" - $PACKAGES <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"not installed here: {', '.join(missing)}")
PY
}

check_requirements() {  # every dependency the wheels declare is among them or on the GPU machine
    local python=$1
    "$python" - "$WHEELS" "$PACKAGES $DEVICE_HAS" <<'PY'
import re
import sys
import zipfile
from pathlib import Path

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

known = {norm(n) for n in sys.argv[2].split()}
unmet = []
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                if name not in known:
                    unmet.append(f"{wheel.name} needs {name}")
print("\n".join(unmet) if unmet else "every declared dependency is a carried wheel or on the GPU machine")
sys.exit(1 if unmet else 0)
PY
}

unsatisfied_optional() {  # the optional wheels whose package here is missing or older than the wheels ask for
    local python=$1
    "$python" - "$WHEELS" <<'PY'
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

folder = Path(sys.argv[1])
wanted = []
for wheel in folder.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    wanted += [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
for wheel in sorted((folder / "optional").glob("*.whl")):
    name = canonicalize_name(wheel.name.split("-")[0])
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    needs = [r for r in wanted if canonicalize_name(r.name) == name and not r.marker]
    if have is None or any(have not in r.specifier for r in needs):
        print(wheel)
PY
}

travelling_bytes() {  # what the device call sends: tracked and untracked-not-ignored files, plus the carried stage
    local tree stage
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{s += $1} END {print s + 0}')
    stage=$(du -sb "$STAGE" | cut -f1)
    say "$tree $stage"
}

prepare() {
    local python=${PYTHON:-python}
    mkdir -p "$WHEELS" "$CACHE/models"
    rm -f "$WHEELS"/*.whl
    local specs
    specs=$(pinned "$python") || die "$specs"
    say "downloading for CPython 3.12, manylinux x86-64: $(echo $specs)"
    # shellcheck disable=SC2086
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d "$WHEELS" $specs || die "pip download failed"
    check_requirements "$python" || die "a wheel needs a package the GPU machine lacks: add it to PACKAGES"
    local optional
    optional=$(PACKAGES=$OPTIONAL pinned "$python") || die "$optional"
    mkdir -p "$WHEELS/optional"
    rm -f "$WHEELS/optional"/*.whl
    # shellcheck disable=SC2086
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d "$WHEELS/optional" $optional || die "pip download failed"
    local cache_dir
    cache_dir=$("$python" -c "from facecloak.core.zoo.cache import cache_root; print(cache_root() / 'models')")
    for name in $SMALL_MODELS; do
        [ -f "$cache_dir/$name.safetensors" ] || die "$name is not in the model cache ($cache_dir): build it first"
        cp "$cache_dir/$name.safetensors" "$CACHE/models/"
    done
    git check-ignore -q "$STAGE/wheels/x.whl" || die "$STAGE/ is not ignored by git: it would travel twice"
    local sizes tree stage total
    sizes=$(travelling_bytes)
    tree=${sizes% *}
    stage=${sizes#* }
    total=$((tree + stage))
    say "$(ls "$WHEELS"/*.whl "$WHEELS"/optional/*.whl | wc -l) wheels and $(ls "$CACHE/models" | wc -l) models in $STAGE: $((stage / 1024)) KiB"
    say "travelling: working tree $((tree / 1024)) KiB + $STAGE $((stage / 1024)) KiB = $((total / 1048576)) MiB" \
        "(limit $LIMIT_MIB of 64)"
    [ "$total" -le $((LIMIT_MIB * 1048576)) ] || die "too much would travel: $((total / 1048576)) MiB"
    say "ready: run 'bash tools/gpu_check.sh device' on the GPU machine, carrying $STAGE"
}

# --- the checks (device, or rehearsed on the CPU) --------------------------------------------------------------

STARTED=$(date +%s)

step() {  # step NAME SECONDS LOGFILE COMMAND...: run with a time limit, log to $OUT, never stop the whole check
    local name=$1 limit=$2 log=$3
    shift 3
    local elapsed=$(($(date +%s) - STARTED))
    if [ $((elapsed + limit)) -gt "$BUDGET_S" ] && [ "$elapsed" -gt 0 ]; then
        limit=$((BUDGET_S - elapsed))
        if [ "$limit" -lt 20 ]; then
            say "[$name] skipped: ${elapsed}s spent of ${BUDGET_S}s" | tee -a "$OUT/gpu_check.log"
            return 0
        fi
    fi
    say "[$name] up to ${limit}s: $*" | tee -a "$OUT/gpu_check.log"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$OUT/$log" 2>&1
    local rc=$?
    say "[$name] exit $rc after $(($(date +%s) - t0))s (log $log)" | tee -a "$OUT/gpu_check.log"
    return 0
}

checks() {  # checks MODE: the steps, shared by the device run and its rehearsal
    local mode=$1 python device speed_args speed4_args models_args
    if [ "$mode" = device ]; then
        python=${PYTHON:-python3}
        device=cuda
        speed_args="--presets low mid high --repeats 2 --megapixels 12.6"
        speed4_args="--presets mid --repeats 2 --faces 4"
        models_args="--repeats 5 --models $("$python" -c 'from facecloak.core.zoo.manifest import load_roles
print(" ".join(load_roles()["ensemble"]))')"
    else
        python=${PYTHON:-python}
        device=cpu
        speed_args="--presets low --repeats 1 --megapixels 1 --set steps=1 --set views_per_step=1
            --ensemble mobileface facesdk_mbf --evaluators openface"
        speed4_args="--presets low --repeats 1 --faces 4 --set steps=1 --set views_per_step=1
            --ensemble mobileface --evaluators openface"
        models_args="--models mobileface --repeats 1"
        export FACECLOAK_TEST_DEVICE=cpu
    fi
    export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen FACECLOAK_CACHE=$ROOT/$CACHE  # the carried models only
    local work=/tmp/gpu_check_work
    mkdir -p "$work"
    cat >"$work/environment.py" <<'PY'
import platform

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
import kornia  # noqa: E402

import facecloak.bench.speed  # noqa: E402,F401
import facecloak.core.protect  # noqa: E402,F401

print("facecloak imports: ok; kornia", kornia.__version__)
PY
    step environment 60 env.txt bash -c "nvidia-smi 2>&1 | head -15; $python $work/environment.py"
    "$python" - "$work" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.data import astronaut

folder = Path(sys.argv[1])
face = astronaut()
Image.fromarray(face).save(folder / "astronaut.png")
pair = np.concatenate([face, face[:, ::-1]], axis=1)
Image.fromarray(np.concatenate([pair, pair[:, ::-1]], axis=0)).save(folder / "four.png")  # four upright faces
PY
    step tests 180 tests.log "$python" -m pytest -q -s -rA -p no:cacheprovider tests/test_cuda.py
    # shellcheck disable=SC2086
    step speed 130 speed.log "$python" -m facecloak.cli bench speed --device "$device" --random-weights \
        --photo "$work/astronaut.png" $speed_args --output "$OUT/speed.json"
    # shellcheck disable=SC2086
    step speed4 60 speed4.log "$python" -m facecloak.cli bench speed --device "$device" --random-weights \
        --photo "$work/four.png" $speed4_args
    # shellcheck disable=SC2086
    step models 50 models.log bash -c "$python -m facecloak.cli bench models --device $device --random-weights \
        $models_args && $python -m facecloak.cli bench models --device $device --random-weights --bfloat16 $models_args"
    {
        say "== gpu_check $mode: $(($(date +%s) - STARTED))s"
        cat "$OUT/gpu_check.log"
        say "== environment"
        cat "$OUT/env.txt"
        say "== tests"
        grep -E "^(PASSED|FAILED|SKIPPED|ERROR)|similarities|change cosine|[0-9]+ (passed|failed)" "$OUT/tests.log"
        for log in speed.log speed4.log; do
            say "== $log"
            grep -E "^(\||device:|Share|peak)" "$OUT/$log"
        done
        say "== models.log"
        grep -E "^(\||###|Command)" "$OUT/models.log" | cut -c1-200
    } >"$OUT/summary.txt" 2>&1
    cat "$OUT/summary.txt"
}

device() {
    OUT=${OUT:?set OUT to the folder that comes back}
    mkdir -p "$OUT"
    : >"$OUT/gpu_check.log"
    local site=/tmp/gpu_check_site optional
    optional=$(unsatisfied_optional "${PYTHON:-python3}")
    say "optional wheels needed here: ${optional:-none}" | tee -a "$OUT/gpu_check.log"
    # shellcheck disable=SC2086
    step install 120 install.log "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$site" "$ROOT/$WHEELS"/*.whl $optional
    cat "$OUT/install.log" >>"$OUT/gpu_check.log" && rm -f "$OUT/install.log"
    export PYTHONPATH=$site:$ROOT/src:$ROOT/tests
    checks device
}

rehearse() {
    OUT=${OUT:-/tmp/gpu_check_rehearsal}
    mkdir -p "$OUT"
    : >"$OUT/gpu_check.log"
    [ -d "$WHEELS" ] || die "no wheelhouse: run 'tools/gpu_check.sh prepare' first"
    local site
    site=$(mktemp -d /tmp/gpu_check_site.XXXX)
    # the wheels must install for the GPU machine's Python 3.12; the rehearsal itself runs on this Python
    # shellcheck disable=SC2086
    say "optional wheels needed here: $(unsatisfied_optional "${PYTHON:-python}")" | tee -a "$OUT/gpu_check.log"
    step install 120 install.log "${PYTHON:-python}" -m pip install -q --no-index --no-deps --no-compile \
        --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS --target "$site" "$WHEELS"/*.whl \
        "$WHEELS"/optional/*.whl
    cat "$OUT/install.log" >>"$OUT/gpu_check.log" && rm -f "$OUT/install.log"
    say "installed for 3.12: $(ls "$site" | grep -c dist-info) packages" | tee -a "$OUT/gpu_check.log"
    rm -rf "$site"
    export PYTHONPATH=$ROOT/src:$ROOT/tests
    checks rehearse
}

case ${1:-} in
prepare) prepare ;;
device) device ;;
rehearse) rehearse ;;
*) die "usage: tools/gpu_check.sh prepare|device|rehearse" ;;
esac
