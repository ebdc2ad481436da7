"""How the attack runs on its device: the same objective either way, shaped for a CPU or for a GPU.

On the CPU the attack works face by face and decides on the host each step (the budget search measures a few
scales one after another); that is what FaceCloak has always computed there, bit for bit. A GPU pays for every
such decision with a wait for its queue to drain, and for every small batch with idle cores, so on CUDA the attack
is *batched*:

- per step, all views of a group of faces go through each surrogate in one batch;
- nothing in the step loop reads a value back from the device: the budget scale is searched on a grid of
  candidates measured together and chosen on the device, gradient scales stay tensors, and the step's
  similarities are read one step late (a run that meets its album goal keeps the change of the step it was met);
- crops are warped for all views at once from matrices computed on the host, and the median blur runs on the
  device instead of through OpenCV;
- the surrogates run under bfloat16 autocast where the GPU has it natively (:attr:`CloakConfig.cuda_autocast`).

The batched attack computes the same objective; its numbers differ from the CPU's by float rounding, the grid
search's resolution and tie-breaking in the median's gradient, all within the tolerance that tests/test_cuda.py
checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..device import cuda_has_bf16
from .config import CloakConfig

# faces per surrogate batch: four views of eight faces of a 160 px FaceNet held about 1 GB of activations
MAX_FACES_PER_BATCH = 8


@dataclass(frozen=True)
class Execution:
    """How a :class:`~facecloak.core.attack.Cloak` runs; :meth:`for_device` chooses it.

    Args:
        batched: the GPU shape (module docstring); False: face by face with host-side decisions, the CPU's way.
        autocast: dtype every surrogate runs in under autocast; None: float32, except the CPU's own rule
            (:attr:`CloakConfig.bfloat16`).
        max_faces: faces whose views share one surrogate batch when ``batched`` (bounds device memory on photos of
            many faces). Default: :data:`MAX_FACES_PER_BATCH`.
    """

    batched: bool = False
    autocast: torch.dtype | None = None
    max_faces: int = MAX_FACES_PER_BATCH

    def __post_init__(self) -> None:
        if self.max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        if self.autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast takes bfloat16, float16 or None, not {self.autocast}")

    @classmethod
    def for_device(cls, device: torch.device, config: CloakConfig) -> Execution:
        """Batched with bfloat16 (where native and ``config.cuda_autocast``) on CUDA; face by face elsewhere."""
        if device.type != "cuda":
            return cls()
        return cls(batched=True, autocast=torch.bfloat16 if config.cuda_autocast and cuda_has_bf16(device) else None)

    def groups(self, count: int) -> list[range]:
        """The faces ``0 .. count-1`` in the groups that share surrogate batches: one by one unless batched."""
        size = self.max_faces if self.batched else 1
        return [range(start, min(count, start + size)) for start in range(0, count, size)]
