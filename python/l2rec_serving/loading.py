"""What model a server serves (``ServiceSpec``) and how it is built (``build_service``).

A spec is small and picklable, so it can travel to every Ray Serve replica, each of which
builds its own model once, on its own device. Two kinds of model:

* no checkpoint: the built-in tiny model, a random-weight tiny Llama with random L2Rec
  weights over a ``SyntheticCatalogue`` (so the server runs anywhere, offline); or, with
  ``model_shape``, a random-weight model of a named shape (``MODEL_SHAPES``, e.g.
  ``qwen3-0.6b-paper``) with ``tiny_num_items`` items and prompts of the shape's length,
  to time serving or batch scoring at a real model's widths without its weights;
* ``checkpoint`` + ``backbone``: ``FusedL2Rec.from_pretrained(checkpoint, backbone=...)``
  over ``AutoModelForCausalLM.from_pretrained(backbone, use_safetensors=True)``.
  Only safetensors weights are read (never pickle). The backbone must be the one the
  checkpoint was saved with (its weights are checked; ``check_backbone_weights=False``
  serves it on another backbone on purpose). With ``titles`` the prompt is built
  from the history (``prompts.TitlePromptBuilder``); without, requests carry ``prompt_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2rec_kernels._dtypes import DTYPES

from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HISTORY_ITEMS, DEFAULT_MAX_K, check_positive_int


@dataclass(frozen=True)
class ServiceSpec:
    """Which model to serve and where. ``device``/``dtype`` "auto": CUDA and bfloat16 where a
    GPU is visible (a GPU replica), else CPU and float32.

    The request limits (``limits.RequestLimits``): ``max_body_bytes`` (413 above it),
    ``max_history_items`` (history length), ``max_k`` (k is at most min(num_items, max_k))
    and ``max_prompt_tokens`` (None: the backbone's own limit, at most 8192).

    Its command-line flags, and its checks as argument errors: ``model_args``."""

    checkpoint: str | None = None
    backbone: str | None = None
    titles: str | None = None
    prompt_template: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    tiny_num_items: int = 200  # the catalogue of the built-in model (tiny or model_shape)
    seed: int = 0
    model_shape: str | None = None
    check_backbone_weights: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS
    max_k: int = DEFAULT_MAX_K
    max_prompt_tokens: int | None = None
    # None: eager. Else a torch.compile mode ("default", "reduce-overhead": CUDA graphs on a
    # GPU) for l2rec_kernels.compile_for_serving; the service compiles every bucket at start.
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_history_items", "max_k", "tiny_num_items"):
            check_positive_int(name, getattr(self, name))
        if self.max_prompt_tokens is not None:
            check_positive_int("max_prompt_tokens", self.max_prompt_tokens)
        if not isinstance(self.check_backbone_weights, bool):
            raise TypeError("check_backbone_weights must be a bool, got "
                            f"{type(self.check_backbone_weights).__name__}")
        if (self.checkpoint is None) != (self.backbone is None):
            raise ValueError("checkpoint and backbone go together: give both (a trained model) "
                             "or neither (the built-in tiny model)")
        if self.titles is not None and self.checkpoint is None:
            raise ValueError("titles are for a checkpoint; the tiny model has its own catalogue")
        if self.model_shape is not None:
            from l2rec_kernels.models.shapes import MODEL_SHAPES

            if self.checkpoint is not None:
                raise ValueError("model_shape builds a random-weight model: give it or a checkpoint, "
                                 "not both")
            if self.model_shape not in MODEL_SHAPES:
                raise ValueError(f"model_shape must be one of {sorted(MODEL_SHAPES)}, "
                                 f"got {self.model_shape!r}")
        if self.compile_mode is not None:
            from l2rec_kernels.models.compiled import SERVING_MODES

            if self.compile_mode not in SERVING_MODES:
                raise ValueError(f"compile_mode must be None or one of {list(SERVING_MODES)}, "
                                 f"got {self.compile_mode!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {self.device!r} but this torch sees no CUDA GPU")
        return device

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def build_tiny_model(num_items: int = 200, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, backend: str = "auto"):
    """(FusedL2Rec, SyntheticCatalogue): random weights, built in about a second on a CPU."""
    from l2rec_kernels.models.config import L2RecConfig
    from l2rec_kernels.models.encoders import build_item_text_table
    from l2rec_kernels.models.fused import FusedL2Rec
    from l2rec_kernels.models.reference import L2Rec
    from l2rec_kernels.models.tiny import tiny_backbone
    from l2rec_kernels.synthetic import SyntheticCatalogue

    cat = SyntheticCatalogue(num_items=num_items, num_genres=10, max_history=8)
    with torch.random.fork_rng():  # the same seed gives the same model in every replica
        torch.manual_seed(seed)
        backbone = tiny_backbone("llama", hidden=64, layers=2, heads=4, kv_heads=2,
                                 vocab=cat.tokenizer.vocab_size, seed=seed, dtype=dtype).to(device)
        cfg = L2RecConfig(num_items=num_items, max_history=cat.max_history, behavior_dim=32,
                          pref_dim=64, top_k=2)
        ref = L2Rec(backbone, cfg)
        with torch.no_grad():
            ref.set_item_text_table(build_item_text_table(cat.titles, backbone, cat.tokenizer))
    # The backbone and the experts in ``dtype``, the small L2Rec heads in float32 (they cast
    # their inputs), which keeps the gates and scores precise: ``to_inference_dtype``.
    ref.to_inference_dtype(dtype)
    return FusedL2Rec.from_reference(ref, backend=backend).eval(), cat


def build_shape_model(name: str, num_items: int, seed: int = 0, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, backend: str = "auto"):
    """FusedL2Rec of the named shape (``MODEL_SHAPES``) with random weights: the backbone,
    the experts (their B drawn too: ``randomize_experts_``) and the item-text table, built on
    ``device`` directly (a 0.6B-parameter backbone never passes through host memory)."""
    import dataclasses

    from l2rec_kernels.models.fused import FusedL2Rec
    from l2rec_kernels.models.reference import L2Rec
    from l2rec_kernels.models.shapes import MODEL_SHAPES, randomize_experts_

    shape = dataclasses.replace(MODEL_SHAPES[name], num_items=num_items)
    with torch.random.fork_rng(), torch.device(device):
        torch.manual_seed(seed)
        ref = L2Rec(shape.backbone(), shape.config())
        randomize_experts_(ref)
        table = ref.item_text_table
        ref.set_item_text_table(torch.randn(table.shape, dtype=table.dtype) * 0.02)
    ref.to_inference_dtype(dtype)
    return FusedL2Rec.from_reference(ref, backend=backend).eval()


def prompt_limit(spec: ServiceSpec, model) -> int:
    """The most prompt tokens a built prompt keeps (its end): what a client's ``prompt_ids``
    may carry, ``spec.max_prompt_tokens`` capped at the backbone's own limit."""
    from .service import max_prompt_tokens

    limit = max_prompt_tokens(model)
    return limit if spec.max_prompt_tokens is None else min(spec.max_prompt_tokens, limit)


def build_builtin_model(spec: ServiceSpec, device: torch.device, dtype: torch.dtype):
    """(model, builder, tokenize, name) for a spec without a checkpoint: the tiny model with
    its catalogue's prompts, or the ``model_shape`` model with ``FixedLengthPromptBuilder``
    prompts of the shape's length. ``builder(history)`` and ``tokenize(text)`` give a
    prompt's tokens, both keeping at most ``prompt_limit(spec, model)`` of them."""
    from l2rec_kernels.prompts import FixedLengthPromptBuilder, SyntheticPromptBuilder, hashed_word_tokens

    n = spec.tiny_num_items
    if spec.model_shape is None:
        from l2rec_kernels.synthetic import BOS

        model, cat = build_tiny_model(n, spec.seed, device, dtype, spec.backend)
        limit = prompt_limit(spec, model)
        # The synthetic catalogue's prompts start with BOS; a given prompt text does too.
        return (model, SyntheticPromptBuilder(cat, limit),
                lambda text: [BOS, *cat.encode(text)][-limit:],
                f"tiny-random (llama, {n} synthetic items)")
    from l2rec_kernels.models.shapes import MODEL_SHAPES

    model = build_shape_model(spec.model_shape, n, spec.seed, device, dtype, spec.backend)
    limit = prompt_limit(spec, model)
    vocab, length = model.backbone.config.vocab_size, MODEL_SHAPES[spec.model_shape].seq_len
    return (model, FixedLengthPromptBuilder(vocab, min(length, limit)),
            lambda text: hashed_word_tokens(text, vocab)[-limit:],
            f"{spec.model_shape}-random ({n} items, {length}-token prompts)")


def load_checkpoint_model(checkpoint: str, backbone_path: str, device: torch.device,
                          dtype: torch.dtype, backend: str = "auto", *,
                          check_backbone_weights: bool = True):
    """(FusedL2Rec, tokenizer or None) from a saved L2Rec checkpoint and a backbone path: the
    backbone and experts in ``dtype``, the heads in float32 (``to_inference_dtype``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l2rec_kernels.models.fused import FusedL2Rec

    backbone = AutoModelForCausalLM.from_pretrained(backbone_path, use_safetensors=True, dtype=dtype)
    backbone = backbone.to(device).eval()
    model = FusedL2Rec.from_pretrained(checkpoint, backbone=backbone, backend=backend,
                                       check_backbone_weights=check_backbone_weights)
    model.to_inference_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    except (OSError, ValueError):  # a backbone directory without tokenizer files
        tokenizer = None
    return model.eval(), tokenizer


def build_service(spec: ServiceSpec):
    """The ``RecommenderService`` a spec describes (models are built here, once)."""
    from .prompts import DEFAULT_TEMPLATE, TitlePromptBuilder, load_titles
    from .service import RecommenderService

    device = spec.resolved_device()
    dtype = spec.resolved_dtype(device)
    if spec.checkpoint is None:
        model, builder, _, name = build_builtin_model(spec, device, dtype)
    else:
        model, tokenizer = load_checkpoint_model(spec.checkpoint, spec.backbone, device, dtype, spec.backend,
                                                 check_backbone_weights=spec.check_backbone_weights)
        builder = None
        if spec.titles is not None:
            if tokenizer is None:
                raise ValueError(f"titles were given but {spec.backbone} has no tokenizer files "
                                 "to build prompts with")
            builder = TitlePromptBuilder(load_titles(spec.titles, model.config.num_items), tokenizer,
                                         prompt_limit(spec, model), spec.prompt_template or DEFAULT_TEMPLATE)
        name = f"{spec.checkpoint} on {spec.backbone}"
    service = RecommenderService(model, builder, name=name, max_history_items=spec.max_history_items,
                                 max_body_bytes=spec.max_body_bytes, max_k=spec.max_k,
                                 max_prompt_tokens=spec.max_prompt_tokens, compile_mode=spec.compile_mode)
    service.warmup()  # with compile_mode: every bucket compiled before the first request
    return service
