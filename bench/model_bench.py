"""The ``model`` section of bench/latency.py (a library: no command line of its own):
L2Rec vs FusedL2Rec vs the plain frozen backbone vs a PEFT peer.

All providers see the same prompts and compute a whole forward (routing, backbone, fusion,
catalogue scores), except the plain backbone, which runs once over the same 2·B stacked
sequences the fused model runs: the floor (frozen GEMMs and attention, no experts).

``FusedL2Rec[<backend>,no_shortcuts]`` is the same fused model with ``layer_shortcuts``
off: every layer run whole, over all rows, as in the plain backbone. The gap between it and
``FusedL2Rec[<backend>]`` is what the last-rows-only last layer and the shared first-layer
q/k/v GEMMs are worth; the plain backbone runs every layer whole.

``PEFT_mixed_batch_top1`` is a real peer: the same experts served by ``peft``'s mixed
adapter batch inference. Every (view, expert) pair is one LoRA adapter (A = A[v, e],
B = B[v, e], scaling alpha/r) on a separate copy of the backbone; PEFT picks one adapter
per sequence (``adapter_names``), so routing is top-1: the sequence of view v of a user
uses that user's argmax expert of view v. It does less expert work than the dense-gated
models (one expert per row, not E), which only flatters it. It runs the same 2·B stacked
sequences in one backbone pass, then the same fusion and scoring heads.

Before timing, each case checks that the PEFT peer scores what L2Rec scores with top-1
routing on the same batch (a warning on stderr if not), so the peer is a fair one.

With ``--compile``, ``FusedL2Rec[<backend>,compiled]`` is the fused model through
``compile_for_serving`` (models/compiled.py; one bucket, the case's own shape) and
``plain_backbone_2B[compiled]`` the plain backbone through ``torch.compile``: on CUDA both
replay CUDA graphs (mode="reduce-overhead"). Both compile before timing.

Inputs rotate between a few batches so caches don't flatter a provider.

The PEFT peer is built only for the iLoRA-style presets (no shared experts, routers over
the user vector alone), the ones its one-adapter-per-sequence batch can serve.

Sizes (``AXES``; ``default_sizes``): every combination of the users per batch, the base
model ``shape`` (``MODEL_SHAPES``: the architecture, its widths and the L2Rec preset) and
its seq_len, layers, experts, rank and items (by default the shape's own). By default:
``cpu-small`` (Llama, iLoRA defaults) on the CPU, plus ``cpu-small-qwen3-paper`` (Qwen3,
``L2RecConfig.paper``) in a full CPU run, and ``qwen3-0.6b-paper`` (Qwen3-0.6B's widths,
the paper's setup) in a full GPU run. ``--set model.AXIS=V1,V2`` replaces an axis' values,
e.g.

    python bench/latency.py --sections model --set model.users=1,4 --set model.seq_len=256
    python bench/latency.py --set model.shape=qwen2-0.5b,qwen3-0.6b-paper --set model.users=16
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings

import torch
from _report import Axis, Case, RunConfig, all_sizes, grid, positive_int, stats_rows
from _timing import Rotation, interleaved

from l2rec_kernels import FusedL2Rec, L2Rec, L2RecConfig
from l2rec_kernels._backend import cuda_ext_unavailable_reason, triton_unavailable_reason
from l2rec_kernels.models.base import gather_last
from l2rec_kernels.models.compiled import compile_for_serving
from l2rec_kernels.models.config import NUM_VIEWS
from l2rec_kernels.models.inputs import position_ids_from_mask

# The named shapes live in the package (``python -m l2rec_kernels.tune`` tunes for them too).
from l2rec_kernels.models.shapes import (  # noqa: F401  (re-exported for the other sections)
    CPU_QWEN3_PAPER_SHAPE,
    CPU_SHAPE,
    MODEL_SHAPES,
    QWEN05_SHAPE,
    QWEN3_06B_SHAPE,
    ModelShape,
    randomize_experts_,
)
from l2rec_kernels.models.tiny import synthetic_batch, tiny_backbone

PEFT_PROVIDER = "PEFT_mixed_batch_top1"


def shape_name(text: str) -> str:
    if text not in MODEL_SHAPES:
        raise ValueError(f"expected one of {', '.join(MODEL_SHAPES)}")
    return text


def own_or_int(text: str):
    """An axis value: a positive int, or "own" (the base shape's value)."""
    return None if text == "own" else positive_int(text)
# The sizes ``latency.py --set model.AXIS=...`` chooses -> the ModelShape field they set
# ("users" is the batch, not a field).
_OWN = {"parse": own_or_int, "show": lambda v: "own" if v is None else str(v)}
AXES = {
    "users": Axis("users per batch (B); the backbone sees 2B sequences"),
    "shape": Axis(f"base model: {', '.join(MODEL_SHAPES)}", parse=shape_name),
    "seq_len": Axis("prompt tokens per sequence (T); own = the shape's", **_OWN),
    "layers": Axis("decoder layers; own = the shape's", **_OWN),
    "experts": Axis("experts per view (E); own = the shape's", **_OWN),
    "rank": Axis("LoRA rank of every expert (r); own = the shape's", **_OWN),
    "items": Axis("catalogue items scored; own = the shape's", **_OWN),
}
SHAPE_FIELDS = {"seq_len": "seq_len", "layers": "layers", "experts": "num_experts", "rank": "rank",
                "items": "num_items"}


def build_models(shape: ModelShape, device: torch.device, dtype: torch.dtype,
                 fused_backends: tuple[str, ...], peft: bool = False):
    """(L2Rec, {backend: FusedL2Rec}, PEFT model or None). The PEFT model wraps a deep copy
    of the backbone taken before L2Rec patches its linears, so the two never interfere."""
    backbone = tiny_backbone(shape.arch, hidden=shape.hidden, layers=shape.layers,
                             heads=shape.heads, kv_heads=shape.kv_heads,
                             intermediate=shape.intermediate, head_dim=shape.head_dim,
                             vocab=shape.vocab, max_positions=max(512, shape.seq_len),
                             dtype=dtype).to(device)
    cfg = shape.config()
    # The PEFT peer serves one adapter per sequence: no shared experts, no prompt-aware router.
    peft = peft and cfg.num_shared_experts == 0 and cfg.router_inputs == ("user",)
    memo: dict[int, object] = {}
    peft_backbone = copy.deepcopy(backbone, memo) if peft else None
    ref = L2Rec(backbone, cfg).to(device)
    randomize_experts_(ref)
    ref.validate_inputs = False  # time the models, not the input checks
    fused = {b: FusedL2Rec.from_reference(ref, backend=b) for b in fused_backends}
    for f in fused.values():
        f.validate_inputs = False
    peft_model = None
    if peft:
        # the copy of each targeted linear -> its experts
        copies = {memo[id(m)]: experts for m, experts in ref.adapted_linears.items()}
        peft_model = build_peft_model(peft_backbone.base_model, copies, ref.config)
    return ref, fused, peft_model


def adapter_name(view: int, expert: int) -> str:
    return f"v{view}_e{expert}"


def build_peft_model(inner: torch.nn.Module, copies: dict, cfg: L2RecConfig):
    """PEFT LoRA on ``inner`` (the backbone's base model, no LM head), one adapter per
    (view, expert), its A/B set to that expert of each targeted linear."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(cfg.target_modules))
    names = [adapter_name(v, e) for v in range(NUM_VIEWS) for e in range(cfg.num_experts)]
    with warnings.catch_warnings():  # deprecation notes between peft and transformers 5
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(inner, lora, adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, lora)
    done = 0
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, LoraLayer):
                continue
            experts = copies[layer.get_base_layer()]
            for v in range(NUM_VIEWS):
                for e in range(cfg.num_experts):
                    name = adapter_name(v, e)
                    if abs(layer.scaling[name] - cfg.scaling) > 1e-12:
                        raise RuntimeError(f"PEFT scaling {layer.scaling[name]} != {cfg.scaling}")
                    layer.lora_A[name].weight.copy_(experts.lora_a[v, e])
                    layer.lora_B[name].weight.copy_(experts.lora_b[v, e])
            done += 1
    if done != len(copies):
        raise RuntimeError(f"PEFT adapted {done} linears, L2Rec {len(copies)}")
    return model.eval()


def peft_forward(ref: L2Rec, peft_model, batch: dict) -> torch.Tensor:
    """Catalogue scores from the PEFT peer: top-1 expert per (user, view) from L2Rec's own
    routers, both views' sequences stacked into one mixed-adapter batch, then L2Rec's
    fusion and scoring heads."""
    ids, mask, history = batch["input_ids"], batch["attention_mask"], batch["history_ids"]
    users = ids.shape[0]
    top1 = ref.gate_logits(history).argmax(-1).tolist()  # argmax of softmax(x/τ) = argmax x
    names = [adapter_name(v, e) for v in range(NUM_VIEWS) for e in top1[v]]
    ids2, mask2 = ids.repeat(NUM_VIEWS, 1), mask.repeat(NUM_VIEWS, 1).bool()
    hidden = peft_model(input_ids=ids2, attention_mask=mask2.long(),
                        position_ids=position_ids_from_mask(mask2), use_cache=False,
                        adapter_names=names).last_hidden_state
    last = gather_last(hidden, mask2)
    return ref.score(ref.fusion(last[:users], last[users:]), None)


def check_peft_peer(ref: L2Rec, peft_model, batch: dict, dtype: torch.dtype) -> float:
    """Relative error of the PEFT peer's scores against L2Rec's own with top-1 routing on
    ``batch`` (item 0, the padding id, left out); a warning on stderr past the tolerance."""
    top_k = ref.config.top_k
    try:
        ref.config.top_k = 1
        with torch.inference_mode():
            want = ref(**batch).scores[:, 1:].double()
            got = peft_forward(ref, peft_model, batch)[:, 1:].double()
    finally:
        ref.config.top_k = top_k
    err = ((got - want).norm() / want.norm()).item()
    tol = 1e-4 if dtype == torch.float32 else 6e-2
    if not err <= tol:
        print(f"# WARNING model {PEFT_PROVIDER}: relative error {err:.2e} vs L2Rec with top-1 "
              f"routing (tolerance {tol:g}): the peer does not compute what L2Rec does", file=sys.stderr)
    return err


def compiled_providers(fused: FusedL2Rec, plain, users: int, seq_len: int, device: torch.device) -> dict:
    """{provider: callable(batch)}: the fused model via ``compile_for_serving`` with one
    bucket (this case's shape, so nothing is padded) and the plain backbone through
    ``torch.compile`` at the same shape; on CUDA both replay CUDA graphs
    (mode="reduce-overhead"). Each compiles on its first call (``model_providers`` makes
    those calls before timing)."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    runner = compile_for_serving(fused, mode=mode, batch_buckets=(users,), length_buckets=(seq_len,))
    graph = torch.compile(lambda b: plain(b).last_hidden_state, fullgraph=True, dynamic=False,
                          mode=mode)

    def plain_compiled(b):
        if runner.cuda_graphs:  # this replay may overwrite the previous one's output
            torch.compiler.cudagraph_mark_step_begin()
        return graph(b)

    return {f"FusedL2Rec[{fused.backend},compiled]": lambda b: runner(**b),
            "plain_backbone_2B[compiled]": plain_compiled}


def model_providers(shape: ModelShape, users: int, device: torch.device, dtype: torch.dtype,
                    fused_backends: tuple[str, ...] = ("torch",), peft: bool = True, rotate: int = 2,
                    no_shortcuts: bool = True, compiled: bool = False):
    """({provider: zero-arg callable} for one batch size, tokens per call). ``compiled`` adds
    ``compiled_providers`` for the Triton backend where it runs, else the first one."""
    ref, fused, peft_model = build_models(shape, device, dtype, fused_backends, peft)
    batches = [synthetic_batch(users, shape.seq_len, 20, vocab=shape.vocab,
                               num_items=shape.num_items, ragged=False, seed=s, device=device)
               for s in range(rotate)]
    base = ref.backbone.base_model

    def plain(b):
        ids, mask = b["input_ids"].repeat(2, 1), b["attention_mask"].repeat(2, 1)
        return base(input_ids=ids, attention_mask=mask,
                    position_ids=position_ids_from_mask(mask.bool()), use_cache=False)

    def rotating(fn):  # each provider walks the same batches in the same order
        nxt = Rotation(batches)
        return lambda: fn(nxt())

    providers = {"plain_backbone_2B": rotating(plain), "L2Rec": rotating(lambda b: ref(**b))}
    for name, model in fused.items():
        providers[f"FusedL2Rec[{name}]"] = rotating(lambda b, model=model: model(**b))
    if no_shortcuts and fused:
        # The same fused model with layer_shortcuts = False (every layer run whole, as in
        # the plain backbone): shows what the shortcuts are worth on their own.
        name = next(iter(fused))
        full = FusedL2Rec.from_reference(ref, backend=name)
        full.validate_inputs, full.layer_shortcuts = False, False
        providers[f"FusedL2Rec[{name},no_shortcuts]"] = rotating(lambda b: full(**b))
    if compiled and fused:
        name = "triton" if "triton" in fused else next(iter(fused))  # the GPU's fast backend
        for label, fn in compiled_providers(fused[name], plain, users, shape.seq_len, device).items():
            with torch.no_grad():
                for _ in range(2):  # compile (and on CUDA record the graph) before timing
                    fn(batches[0])
            providers[label] = rotating(fn)
    if peft_model is not None:
        check_peft_peer(ref, peft_model, batches[0], dtype)
        providers[PEFT_PROVIDER] = rotating(lambda b: peft_forward(ref, peft_model, b))
    return providers, NUM_VIEWS * users * shape.seq_len


def fused_backends(device: torch.device, quick: bool) -> tuple[str, ...]:
    """FusedL2Rec backends worth timing on ``device``: torch on the CPU; on CUDA Triton
    (--quick), or torch, Triton and the CUDA extension where they run (full)."""
    if device.type != "cuda":
        return ("torch",)
    out = ["triton"] if triton_unavailable_reason(device) is None else []
    if not quick:
        out = ["torch", *out] + (["cuda"] if cuda_ext_unavailable_reason(device) is None else [])
    return tuple(out) or ("torch",)


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    if cfg.quick:
        shapes = [CPU_SHAPE.name]
    elif cfg.cuda:
        shapes = [QWEN3_06B_SHAPE.name]
    else:
        shapes = [CPU_SHAPE.name, CPU_QWEN3_PAPER_SHAPE.name]
    users = [8] if cfg.quick else [8, 16, 32, 64] if cfg.cuda else [4, 8, 16]
    return {"users": users, "shape": shapes, **{axis: [None] for axis in SHAPE_FIELDS}}


def per_second(tokens: int, users: int):
    """stats_rows' ``extra``: tokens/s and users/s from a provider's median milliseconds."""
    return lambda name, s: {"tokens_per_s": tokens / s["median"] * 1e3,
                            "users_per_s": users / s["median"] * 1e3}


def shape_cases(section: str, grid_sizes: dict[str, list], run) -> list[Case]:
    """A case per point of the size grid: the named shape with the point's overrides, timed
    by ``run(shape, users)`` (the model and train sections)."""
    out = []
    for point in grid(grid_sizes):
        shape = dataclasses.replace(MODEL_SHAPES[point["shape"]], **{
            field: point[axis] for axis, field in SHAPE_FIELDS.items() if point[axis] is not None})
        out.append(Case(f"{section} {shape.label(point['users'])}",
                        lambda shape=shape, users=point["users"]: run(shape, users)))
    return out


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    """The model section: one case per combination of the sizes (by default per batch size)."""
    backends = fused_backends(cfg.device, cfg.quick)
    timing = cfg.timing(3, 1) if cfg.quick else cfg.timing(10, 3)

    def run(shape: ModelShape, users: int) -> None:
        providers, tokens = model_providers(shape, users, cfg.device, cfg.dtype, backends,
                                            compiled=cfg.compile)
        stats = interleaved(providers, cfg.device, **timing)
        for row in stats_rows("model", shape.label(users), stats, x=("users", users),
                              config={**dataclasses.asdict(shape), "users": users}, reference="L2Rec",
                              floor="plain_backbone_2B", dtype=cfg.dtype, extra=per_second(tokens, users),
                              providers=providers if cfg.memory else None, device=cfg.device):
            emit(row)
        del providers
        if cfg.cuda:
            torch.cuda.empty_cache()

    return shape_cases("model", all_sizes(default_sizes(cfg), sizes), run)
