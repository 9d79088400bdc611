"""One module per ``distillseg`` sub-command (see :mod:`DistillSegLib.cli`)."""
