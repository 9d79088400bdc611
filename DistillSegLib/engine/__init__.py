"""The warm engine: ``distillseg serve`` (:mod:`.server`), its JSON-lines protocol
(:mod:`.protocol`) and a client that starts and drives it over pipes (:mod:`.client`).

:mod:`.protocol` and :mod:`.client` import only the standard library, so the Slicer module
can use them without torch.
"""
