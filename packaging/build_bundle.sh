#!/usr/bin/env bash
# Build the one-folder Linux bundle: dist/facecloak/{facecloak-gui,facecloak,_internal/}.
# Usage: packaging/build_bundle.sh [DIST_DIR]   (default: dist; build files go to build/pyinstaller)
# FACECLOAK_BUNDLE_CUDA=1 keeps the NVIDIA libraries (a CUDA bundle); default is CPU-only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="${1:-$ROOT/dist}"
WORK="${FACECLOAK_BUILD_DIR:-$ROOT/build/pyinstaller}"
PYTHON="${PYTHON:-python}"
cd "$ROOT"

if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
  echo "installing PyInstaller into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m pip install "pyinstaller>=6.11"
fi
for tool in readelf gcc; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install binutils gcc)" >&2; exit 1; }
done
# icons are committed; re-render only when the SVG is newer than the PNGs
if [ src/facecloak/resources/icons/facecloak.svg -nt src/facecloak/resources/icons/facecloak.png ]; then
  QT_QPA_PLATFORM=offscreen "$PYTHON" packaging/render_icons.py >/dev/null
fi

start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath "$DIST" --workpath "$WORK" packaging/facecloak.spec
end=$(date +%s)

BUNDLE="$DIST/facecloak"
cp src/facecloak/resources/facecloak.desktop "$BUNDLE/"
cp src/facecloak/resources/icons/facecloak.svg "$BUNDLE/facecloak.svg"
echo "built $BUNDLE in $((end - start)) s; size $(du -sh "$BUNDLE" | cut -f1)"
"$BUNDLE/facecloak" --help >/dev/null && echo "facecloak --help: ok"
