"""The listing: a graph's topology as text, the one format the interpreter of :mod:`.network` runs.

A listing reads::

    input 112,112,3
    const w0 64x3x3x3
    const w1 64
    %1 = conv %0 w0 w1 s=2,2 d=1,1 p=SAME f=BiasAdd
    %2 = depthwise %1 w2 w3 s=1,1 d=1,1 p=VALID f=BiasAdd,Relu6

The input's NHWC shape (without the batch), then the float constants with their (torch-layout) shapes, then one
line per op: ``%2`` is a depthwise convolution of value ``%1`` with constants ``w2`` (filter) and ``w3`` (bias);
``%0`` is the input. Structure that the source file stores as integer constants (paddings, reduction axes,
reshape targets) is written into the op lines as attributes; the float constants become the state dict
(``w0``, ``w1``... in order of use). A scalar constant's shape is ``-``.

Each source format has a writer (:mod:`.from_tfjs`, :mod:`.from_onnx`, :mod:`.from_tflite`). The listings of
the zoo's graphs ship as package data (``core/zoo/listings/NAME.txt``), so a network is built without its source
file; converting re-derives the listing from the verified file and refuses the file unless the two agree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch


@functools.cache
def load_listing(name: str) -> str:
    """The shipped listing ``listings/NAME.txt``."""
    return (resources.files("facecloak.core.zoo") / "listings" / f"{name}.txt").read_text(encoding="utf-8")


def ints(values: Sequence[int] | np.ndarray) -> str:
    """Integers as a listing attribute: ``1,2,3``."""
    return ",".join(str(int(v)) for v in np.asarray(values).reshape(-1))


class ListingWriter:
    """Builds a listing: float constants (``w0``, ``w1``... in order of use) and numbered op lines.

    ``alias`` maps the source graph's tensors to listing tokens (``%3``); the writer sets it for each op's outputs.
    """

    def __init__(self) -> None:
        self.state: dict[str, np.ndarray] = {}
        self.ops: list[str] = []
        self.alias: dict[object, str] = {}

    def const(self, value: np.ndarray) -> str:
        token = f"w{len(self.state)}"
        self.state[token] = np.ascontiguousarray(value, dtype=np.float32)
        return token

    def emit(self, text: str, *outputs: object) -> str:
        token = f"%{len(self.ops) + 1}"
        self.ops.append(f"{token} = {text}")
        for output in outputs:
            self.alias[output] = token
        return token

    @property
    def last(self) -> str:
        """The token of the last op (the graph's output, for every graph the zoo runs)."""
        return f"%{len(self.ops)}"

    def listing(self, input_hwc: Sequence[int]) -> str:
        consts = [f"const {k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in self.state.items()]
        return "\n".join([f"input {ints(input_hwc)}", *consts, *self.ops])


def listing_mismatch(expected: str, derived: str) -> str | None:
    """``None`` when the two listings agree, else the first differing line (for the error)."""
    a, b = expected.strip().splitlines(), derived.strip().splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.strip() != y.strip():
            return f"line {i + 1}: expected {x.strip()!r}, the file gives {y.strip()!r}"
    if len(a) != len(b):
        return f"expected {len(a)} lines, the file gives {len(b)}"
    return None


def checked_state(
    expected: str, derived: tuple[str, dict[str, np.ndarray]], source_name: str
) -> dict[str, torch.Tensor]:
    """State dict of the network of listing ``expected`` from a ``(listing, constants)`` pair derived from a model
    file, refusing a file whose topology is not the expected one."""
    listing, state = derived
    problem = listing_mismatch(expected, listing)
    if problem:
        raise ValueError(f"{source_name} is not the graph this converter was written for ({problem})")
    return {k: torch.from_numpy(v) for k, v in state.items()}
