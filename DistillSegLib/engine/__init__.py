"""The warm engine: ``distillseg serve`` (:mod:`.server`), its JSON-lines protocol
(:mod:`.protocol`) and a client that starts and drives it over pipes (:mod:`.client`).

:mod:`.protocol`, :mod:`.client` and :mod:`.processes` (starting and killing process trees)
import only the standard library and psutil, so the Slicer module can use them without torch.
"""
