"""The test suite's one accuracy yardstick: a relative-error bound per dtype, and ``rel_err``.

Results are compared with a float64 reference computed from the same (already rounded)
inputs, so a bound covers only the op's own rounding: fp32's covers accumulation over long
sums; fp16's and bf16's are about twice the dtype's machine epsilon, what rounding the
result (and intermediates kept in that dtype) costs. A test that needs a tighter or looser
bound scales one of these and says why.
"""

from __future__ import annotations

import torch

REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    # 4x this is the README's bound for a whole bf16 model's scores (test_fused.py).
    torch.bfloat16: 1.5e-2,
}


def assert_close_tol(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for ``torch.testing.assert_close`` from ``REL_TOL``: atol only
    catches entries near zero, where a relative bound means nothing, so it is a tenth of rtol
    (for values of order one)."""
    rtol = scale * REL_TOL[dtype]
    return {"rtol": rtol, "atol": rtol / 10}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Norm-wise relative error of ``got`` against ``want``, in float64, over ``want``'s finite
    entries. The non-finite ones (e.g. the -inf padding score) must be the same in ``got``:
    same places, same values. 0.0 when there is nothing to compare."""
    want = want.detach().double()  # on want's device: GPU-sized results stay there
    got = got.detach().to(want.device, torch.float64)
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "non-finite entries in different places"
    code = dict(nan=0.0, posinf=1.0, neginf=-1.0)  # NaN, +inf, -inf told apart
    assert torch.equal(got[~finite].nan_to_num(**code), want[~finite].nan_to_num(**code)), \
        "non-finite entries differ"
    err, norm = (got[finite] - want[finite]).norm().item(), want[finite].norm().item()
    if norm == 0.0:  # nothing to be relative to: only an exact match passes
        return 0.0 if err == 0.0 else float("inf")
    return err / norm
