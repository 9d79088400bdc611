"""Parts of the DistillSeg Slicer module (named so as not to clash with the engine ``DistillSegLib``).

``Logic``, ``ProcessRunner`` and ``Catalogue`` need only ``slicer-core`` (or nothing from
Slicer); ``Widget``, ``Parameters`` and ``Install`` need the Slicer application.
"""
