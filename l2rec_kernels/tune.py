"""``python -m l2rec_kernels.tune``: the command lives in ``l2rec_kernels.cli.tune``."""

if __name__ == "__main__":
    from .cli._run import run
    from .cli.tune import main

    raise SystemExit(run(main, "python -m l2rec_kernels.tune"))
