"""DistillSeg in the browser: a trame-slicer front end on the Slicer module's own logic.

``distillseg web`` (``DistillSegLib/commands/web.py``) hands over to ``python -m DistillSegWeb``.
The workflow (:mod:`.workflow`) drives the module's ``SceneLogic``
(``DistillSeg/DistillSegModuleLib/Logic.py``) on trame-slicer's MRML scene: one logic, two
front ends. Needs ``slicer-core`` and ``trame-slicer`` (``pip install 'distillseg[web]'``),
never Qt; the engine never imports this package (``Testing/test_layering.py``).
"""
