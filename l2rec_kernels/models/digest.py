"""The backbone weight digest a checkpoint stores (``backbone_digest`` in
l2rec_config.json), so that ``from_pretrained`` can tell the backbone a model was saved
with from another one of the same shape.

A checkpoint records DIGEST_SAMPLES values of every floating-point parameter of the
backbone's base model (what L2Rec runs; the LM head is left out), read at fixed positions
and kept as float64 numbers in l2rec_config.json ("backbone_digest"). ``from_pretrained``
reads the same positions of the backbone it is given and compares value by value:

  |got - saved| <= RTOL · max(|got|, |saved|) + ATOL · rms(saved values of that tensor)

RTOL = 2^-7 is above what a dtype change costs: rounding to bf16 moves a value by at most
2^-9 of itself, to fp16 by 2^-11 (fp32 -> fp16 -> bf16 at most their sum), so the same
weights loaded in bf16, fp16 or fp32 pass whatever dtype they were saved in. ATOL covers
values near zero (fp16 subnormals). Another backbone of the same shape (another
checkpoint, a fine-tune, a re-initialisation) differs far beyond that on the sampled
values. It is a sample: an edit to a few elements can go unseen.

Cost: a gather of DIGEST_SAMPLES elements per parameter (a few hundred tiny reads on a
multi-GB model), the same on any device. Positions are ``(i + 1) · P mod numel`` with
P a prime, so they spread over rows and columns and do not depend on torch's RNG.
"""

from __future__ import annotations

import json
import re
import warnings

import torch
from torch import nn

from .adapters import plain_name

DIGEST_VERSION = 1
DIGEST_SAMPLES = 8
_DIGEST_RTOL = 2.0 ** -7
_DIGEST_ATOL = 2.0 ** -10
_DIGEST_STEP = 2654435761
_NUMBER_LIST = re.compile(r"\[\s*(-?\d[^\[\]{}\"]*?)\s*\]")


def _digest_params(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter: the floating-point parameters of the backbone's base model, by
    their names in the plain backbone (an L2Rec model's wrappers add ``.base_layer``)."""
    runs = {id(p) for p in getattr(backbone, "base_model", backbone).parameters()}
    return {plain_name(n): p for n, p in backbone.named_parameters(remove_duplicate=False)
            if id(p) in runs and p.is_floating_point()}


def _sample(param: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` values of ``param`` at the digest's fixed positions, float64 on the CPU."""
    flat = param.detach().reshape(-1)
    numel = flat.numel()
    pos = range(numel) if numel <= n else [(i + 1) * _DIGEST_STEP % numel for i in range(n)]
    idx = torch.tensor(list(pos), dtype=torch.long, device=flat.device)
    return flat[idx].double().cpu()


def backbone_digest(backbone: nn.Module) -> dict:
    """The weight digest a checkpoint stores for ``backbone`` (see the comment above)."""
    tensors = {}
    for name, p in _digest_params(backbone).items():
        if p.is_meta:  # offloaded without values: nothing to record
            continue
        values = [float(f"{v:.9g}") for v in _sample(p, DIGEST_SAMPLES).tolist()]
        tensors[name] = {"shape": list(p.shape), "values": values}
    return {"version": DIGEST_VERSION, "samples_per_tensor": DIGEST_SAMPLES, "tensors": tensors}


def backbone_digest_mismatches(saved: dict, backbone: nn.Module) -> list[str]:
    """What differs between a checkpoint's digest and ``backbone`` ([] when they agree).

    Only the parameters both name are compared (a backbone loaded with another transformers
    version may name some differently); a warning says so when none is shared."""
    if saved.get("version") != DIGEST_VERSION:
        warnings.warn(f"the checkpoint's backbone digest has version {saved.get('version')!r}, "
                      f"this version of l2rec-kernels reads {DIGEST_VERSION}: the backbone's "
                      "weights were not checked", UserWarning, stacklevel=3)
        return []
    params, n = _digest_params(backbone), int(saved["samples_per_tensor"])
    shared = [name for name in saved["tensors"] if name in params]
    if not shared and saved["tensors"]:
        warnings.warn("none of the backbone parameters the checkpoint's digest samples "
                      f"({next(iter(saved['tensors']))!r}, ...) has that name in this backbone: "
                      "its weights were not checked", UserWarning, stacklevel=3)
    problems = []
    for name in shared:
        entry, p = saved["tensors"][name], params[name]
        if list(p.shape) != list(entry["shape"]):
            problems.append(f"{name} has shape {list(p.shape)}, saved {list(entry['shape'])}")
            continue
        if p.is_meta:
            continue
        want, got = torch.tensor(entry["values"], dtype=torch.float64), _sample(p, n)
        diff = (got - want).abs()
        bound = (_DIGEST_RTOL * torch.maximum(got.abs(), want.abs())
                 + _DIGEST_ATOL * want.square().mean().sqrt())
        bad = int((~(diff <= bound)).sum())  # NaN counts as different
        if bad:
            rel = (got - want).norm().item() / max(want.norm().item(), 1e-30)
            problems.append(f"{name} ({bad} of {want.numel()} sampled values differ; "
                            f"relative difference {rel:.2g})")
    return problems


def json_text(meta: dict) -> str:
    """``meta`` as indented JSON, each list of numbers on one line (the digest's samples)."""
    text = json.dumps(meta, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                            text)
