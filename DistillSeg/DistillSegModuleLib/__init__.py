"""Parts of the DistillSeg Slicer module (named so as not to clash with the engine ``DistillSegLib``).

``Logic`` (the scene logic), ``Nodes``, ``Pet``, ``ProcessRunner``, ``Catalogue``,
``Dependencies`` and ``SelfTest`` need only ``slicer-core`` (or nothing from Slicer) and are
tested in ``Testing/``; ``Widget``, ``Parameters``, ``Install`` and the download in ``Samples``
need the Slicer application.
"""
