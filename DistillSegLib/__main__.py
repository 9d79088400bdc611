"""``python -m DistillSegLib`` (``PythonSlicer -m DistillSegLib`` inside Slicer)."""

from .cli import main

raise SystemExit(main())
