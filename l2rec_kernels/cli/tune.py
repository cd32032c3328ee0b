"""Fill the ``backend="auto"`` cache ahead of time for a model's shapes:

    python -m l2rec_kernels.tune --shape qwen3-0.6b-paper [--batch 1,16,64] [--seq-len 256]
                                 [--dtype bf16] [--k 10,100] [--items N] [--only-missing]

For each batch size B it calls every op a ``FusedL2Rec`` forward and ``recommend`` call
at that shape, with ``backend="auto"``, so each op's paths are timed on the GPU and the
faster kept (``l2rec_kernels._autotune``: the cache file, the buckets, the timing):

* ``dpmoe_linear`` for every adapted linear's (d_in, d_out), on the 2·B·T rows of a padded
  forward and on the 2·B rows the last layer runs (its last-row shortcut);
* ``route`` over the 2·B gate rows, ``batch_metadata`` over the [B, T] mask;
* ``topk_items`` for B queries over the catalogue (``--items``, the shape's own by
  default, plus the padding item), for each ``--k``, excluding a history of ``--history``.

Model shapes are ``l2rec_kernels.models.shapes.MODEL_SHAPES`` (the benchmarks' too). The
backbone is built on the meta device for its layer sizes only: nothing is loaded or
allocated beyond each op's inputs. Prints one line per measured bucket and the cache file.
``--only-missing`` keeps the buckets already cached. Needs a CUDA GPU (CPU tensors are never
measured: ``auto`` is the torch path there).
"""

from __future__ import annotations

import argparse

import torch

from .. import _autotune, settings
from .._dtypes import SHORT_DTYPES
from ..models import adapters
from ..models.shapes import MODEL_SHAPES, ModelShape
from ..ops.batch_metadata import batch_metadata
from ..ops.dpmoe_linear import dpmoe_linear
from ..ops.route import route
from ..ops.topk_items import topk_items


def linear_sizes(shape: ModelShape) -> list[tuple[int, int]]:
    """The (d_in, d_out) of every linear the shape's L2Rec config adapts, each once."""
    with torch.device("meta"):
        backbone = shape.backbone(layers=1)
    cfg = adapters.resolve_targets(shape.config(), backbone)
    found = adapters.find_target_linears(backbone, cfg.target_modules)
    return sorted({adapters.in_out_features(m) for m in found.values()})


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def tune_shape(shape: ModelShape, batches: list[int], seq_len: int, device: torch.device,
               dtype: torch.dtype, ks: list[int], items: int, history: int) -> None:
    """Call every op at the shape's sizes with ``backend="auto"`` (under ``_autotune.tuning``
    the calls measure)."""
    cfg = shape.config()
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*size):  # random values, never zeros (zeros can run faster than real data)
        return torch.randn(*size, generator=g, device=device, dtype=dtype) * 0.1

    sizes = linear_sizes(shape)
    experts, rank, shared = cfg.num_experts, cfg.rank, cfg.num_shared_experts
    for users in batches:
        seqs = 2 * users
        gates = torch.softmax(rand(seqs, experts).float(), -1).to(dtype)
        seq_view = torch.arange(2, dtype=torch.int32, device=device).repeat_interleave(users)
        with torch.no_grad():
            for d_in, d_out in sizes:
                weight, bias = rand(d_out, d_in), None
                lora_a, lora_b = rand(2, experts, rank, d_in), rand(2, experts, d_out, rank)
                extra = ({"shared_a": rand(shared, rank, d_in), "shared_b": rand(shared, d_out, rank)}
                         if shared else {})
                for rows_per_seq in (seq_len, 1):  # a padded forward; the last layer's last rows
                    x = rand(seqs * rows_per_seq, d_in)
                    cu = torch.arange(0, (seqs + 1) * rows_per_seq, rows_per_seq, dtype=torch.int32,
                                      device=device)
                    dpmoe_linear(x, weight, bias, lora_a, lora_b, gates, seq_view, cu, cfg.scaling,
                                 backend="auto", validate=False, **extra)
                    del x
            route(rand(seqs, experts), top_k=cfg.top_k, temperature=cfg.gate_temperature,
                  backend="auto")
            mask = torch.ones(users, seq_len, dtype=torch.long, device=device)
            mask[: users // 2, : seq_len // 4] = 0  # some left padding, as real batches have
            batch_metadata(mask, backend="auto")
            table = rand(items + 1, cfg.pref_dim)
            query = rand(users, cfg.pref_dim)
            exclude = torch.randint(0, items + 1, (users, 1 + history), generator=g, device=device)
            for k in ks:
                if k <= items:
                    topk_items(query, table, k, exclude=exclude, backend="auto")
            del table
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m l2rec_kernels.tune",
                                 description="Fill the backend='auto' cache for a model shape "
                                             "(see the module docstring).")
    ap.add_argument("--shape", required=True, choices=sorted(MODEL_SHAPES),
                    help="the model shape (l2rec_kernels.models.shapes)")
    ap.add_argument("--batch", type=_positive_ints, default=[1, 16, 64],
                    help="users per batch, comma-separated (default 1,16,64)")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="prompt tokens per sequence (default: the shape's)")
    ap.add_argument("--dtype", choices=sorted(SHORT_DTYPES), default="bf16", help="default bf16")
    ap.add_argument("--k", type=_positive_ints, default=[10, 100],
                    help="recommend's k values for topk_items (default 10,100)")
    ap.add_argument("--items", type=int, default=None,
                    help="catalogue items (default: the shape's)")
    ap.add_argument("--history", type=int, default=20,
                    help="history items excluded per user in topk_items (default 20)")
    ap.add_argument("--device", default="cuda", help="default cuda (the current GPU)")
    ap.add_argument("--only-missing", action="store_true",
                    help="keep buckets already cached instead of measuring them again")
    args = ap.parse_args(argv)
    shape = MODEL_SHAPES[args.shape]
    seq_len = shape.seq_len if args.seq_len is None else args.seq_len
    items = shape.num_items if args.items is None else args.items
    for name, value in (("--seq-len", seq_len), ("--items", items)):
        if value < 1:
            ap.error(f"{name} must be >= 1, got {value}")
    if args.history < 0:
        ap.error(f"--history must be >= 0, got {args.history}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU is visible: backend='auto' is measured for CUDA tensors only")
    if not _autotune.measures(device.type):
        ap.error(f"backend='auto' is not measured for {device.type} tensors (it is the torch path "
                 "there): nothing to tune")
    if not _autotune.measuring_enabled():
        ap.error(f"{settings.AUTOTUNE}=0 turns measuring off; unset it to tune")
    log: list = []
    with _autotune.tuning(force=not args.only_missing, log=log):
        tune_shape(shape, args.batch, seq_len, device, SHORT_DTYPES[args.dtype], args.k, items, args.history)
    width = max((len(key) for key, _ in log), default=10)
    for key, entry in log:
        times = "  ".join(f"{c} {ms:.4f} ms" for c, ms in entry["ms"].items())
        print(f"{key:<{width}}  -> {entry['choice']:<6}  {times}")
    name = _autotune.device_name(device.type, device.index)
    print(f"# {len(log)} bucket(s) measured for {shape.name} on {name}; cache: "
          f"{_autotune.cache_path(name)}")
    return 0
