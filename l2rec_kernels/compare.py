"""``python -m l2rec_kernels.compare``: the command lives in ``l2rec_kernels.cli.compare``."""

if __name__ == "__main__":
    from .cli._run import run
    from .cli.compare import main

    raise SystemExit(run(main, "python -m l2rec_kernels.compare"))
