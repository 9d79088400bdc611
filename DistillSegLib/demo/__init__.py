"""``distillseg demo``: the fixed sts-petct split, the run (train, predict, evaluate) and its report."""
