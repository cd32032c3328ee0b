"""``python -m l2rec_kernels.evaluate``: the command lives in ``l2rec_kernels.cli.evaluate``."""

if __name__ == "__main__":
    from .cli._run import run
    from .cli.evaluate import main

    raise SystemExit(run(main, "python -m l2rec_kernels.evaluate"))
