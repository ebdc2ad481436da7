"""The cloak: an ensemble attack that protects the faces of a photo (design notes: docs/ATTACK.md).

- :mod:`.config`: :class:`CloakConfig`, the presets and ``--set KNOB=VALUE`` overrides;
- :mod:`.region`: the face's region, working copy, mask and texture allowance;
- :mod:`.budget`: projection onto the caps, the DSSIM budget search, and composing the change onto the photo;
- :mod:`.album`: album memory (warm starts from an earlier photo of the same person);
- :mod:`.cloak`: :class:`Cloak`, the optimisation loop;
- :mod:`.execution`: :class:`Execution`, how the loop runs on its device (face by face on the CPU, batched on a GPU),
  with :mod:`.batched` holding the GPU shape's own pieces.
"""

from .album import CANONICAL_POINTS, CANONICAL_SIZE, AlbumMemory
from .budget import _BilinearUpsampler as _BilinearUpsampler  # private helpers, re-exported for their tests
from .budget import _budget_scale as _budget_scale
from .budget import _largest_within as _largest_within
from .budget import compose
from .cloak import Cloak, CloakCancelled, CloakResult, ProgressCallback, StepMetrics
from .config import PRESETS, CloakConfig, parse_assignments, preset, with_overrides
from .execution import Execution
from .region import face_crops, face_mask, face_region_bounds, texture_allowance, working_region

__all__ = [
    "CANONICAL_POINTS",
    "CANONICAL_SIZE",
    "PRESETS",
    "AlbumMemory",
    "Cloak",
    "CloakCancelled",
    "CloakConfig",
    "CloakResult",
    "Execution",
    "ProgressCallback",
    "StepMetrics",
    "compose",
    "face_crops",
    "face_mask",
    "face_region_bounds",
    "parse_assignments",
    "preset",
    "texture_allowance",
    "with_overrides",
    "working_region",
]
