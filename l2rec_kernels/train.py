"""``python -m l2rec_kernels.train``: the command lives in ``l2rec_kernels.cli.train``."""

if __name__ == "__main__":
    from .cli._run import run
    from .cli.train import main

    raise SystemExit(run(main, "python -m l2rec_kernels.train"))
