"""How far can FusedL2Rec's CPU ratio over L2Rec go at cpu-small, B = 16, one thread?

An experiment, not a benchmark of the package (it swaps a private function): in one process,
interleaved round by round, it times

* ``L2Rec`` and ``FusedL2Rec`` as bench/latency.py's model and train sections build them;
* ``FusedL2Rec[free experts]``: the same fused model with ``dpmoe_linear``'s expert update
  (``_add_experts``) replaced by nothing (inference) or by adding a trainable per-column
  offset (training, so the backward still runs through every layer as the real step does):
  the fused backbone's own work, personalisation free;

and counts the FLOPs of the expert products the real fused model runs (shrink and expand
forward; in training also the four backward products, three where x needs no gradient).
Their marginal cost (FusedL2Rec's time less the free-experts time) over those FLOPs is the
rate the experts effectively run at, next to the best rate this core reaches on the model's
largest base GEMM. L2Rec's time over the free-experts time bounds the ratio any faster
expert implementation could reach against this run's L2Rec.

    .venv/bin/python bench/results/maintainability_speed/floor_experiment.py infer 9
    .venv/bin/python bench/results/maintainability_speed/floor_experiment.py train 7
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
import train_bench
from model_bench import CPU_SHAPE

from l2rec_kernels.ops import dpmoe_linear as dl

torch.set_num_threads(1)
DEV = torch.device("cpu")
MODE = sys.argv[1] if len(sys.argv) > 1 else "infer"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7
REAL_ADD = dl._add_experts
OFFSETS: dict[int, torch.Tensor] = {}
FLOPS = [0.0]


def free_experts(y, x, a_cat, b_cat, coef, rank, shared):
    if torch.is_grad_enabled():
        if y.shape[1] not in OFFSETS:
            OFFSETS[y.shape[1]] = torch.zeros(y.shape[1], requires_grad=True)
        y.add_(OFFSETS[y.shape[1]])


def counting_experts(y, x, a_cat, b_cat, coef, rank, shared):
    n, d_in = x.shape
    cols = a_cat.shape[0] + (0 if shared is None else shared[0].shape[0])
    d_out = b_cat.shape[1]
    products = [d_in, d_out]  # shrink, expand
    if torch.is_grad_enabled():  # d b, d h, d a, and d x where x needs a gradient
        products += [d_out, d_out, d_in] + ([d_in] if x.requires_grad else [])
    FLOPS[0] += sum(2.0 * n * cols * k for k in products)
    REAL_ADD(y, x, a_cat, b_cat, coef, rank, shared)


def best_gemm_rate() -> float:
    a, b = torch.randn(1536, 512), torch.randn(512, 1376)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1536 * 512 * 1376 / min(times)


def main() -> None:
    ref, fused = train_bench.build_models(CPU_SHAPE, DEV, torch.float32)
    batches = train_bench.train_batches(CPU_SHAPE, 16, DEV)
    if MODE == "infer":
        ref.eval()
        fused.eval()

    def provider(model, add):
        opt = torch.optim.AdamW(list(train_bench.trainable(model).values()), lr=1e-4)
        count = [0]

        def run():
            dl._add_experts = add
            try:
                b = batches[count[0] % len(batches)]
                count[0] += 1
                if MODE == "train":
                    train_bench.train_step(model, opt, b, DEV, torch.float32)
                else:
                    with torch.inference_mode():
                        model(**{k: v for k, v in b.items() if k != "labels"})
            finally:
                dl._add_experts = REAL_ADD
        return run

    providers = {"L2Rec": provider(ref, REAL_ADD), "FusedL2Rec": provider(fused, REAL_ADD),
                 "FusedL2Rec[free experts]": provider(fused, free_experts)}
    provider(fused, counting_experts)()  # one real step, counting its expert FLOPs
    expert_flops = FLOPS[0]
    for run in providers.values():
        run()
        run()
    times = {k: [] for k in providers}
    for _ in range(ROUNDS):
        for name, run in providers.items():
            t = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = best_gemm_rate()
    marginal = med["FusedL2Rec"] - med["FusedL2Rec[free experts]"]
    print(f"{MODE}, cpu-small B=16, 1 thread, {ROUNDS} rounds, torch {torch.__version__}")
    for name, ms in med.items():
        print(f"  {name:26s} {ms:8.1f} ms   L2Rec / this = {med['L2Rec'] / ms:.2f}x")
    print(f"  expert products: {expert_flops / 1e9:.2f} GFLOP, marginal cost {marginal:.1f} ms "
          f"-> {expert_flops / max(marginal, 1e-9) / 1e6:.0f} GFLOP/s effective; best base GEMM "
          f"rate {rate / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
