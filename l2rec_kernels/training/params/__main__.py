"""``python -m l2rec_kernels.training.params``: the command lives in ``l2rec_kernels.cli.params``."""

from ...cli._run import run
from ...cli.params import main

raise SystemExit(run(main, "python -m l2rec_kernels.training.params"))
