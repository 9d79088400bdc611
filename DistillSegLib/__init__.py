"""DistillSeg engine: PET/CT I/O, student, teachers, distillation, metrics and CLI.

Plain Python, no Slicer import anywhere in this package.
"""

__version__ = "0.1.0"

from .errors import CancelledError, DistillSegError

__all__ = ["__version__", "DistillSegError", "CancelledError"]
