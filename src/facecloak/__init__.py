"""FaceCloak: protect photos from face recognition, locally, with a measured report.

The engine lives in :mod:`facecloak.core` (no Qt), the desktop app in :mod:`facecloak.app`.
"""

__version__ = "0.1.0"
