"""Package-level promises: the public names, and a cheap import with no side effects."""

import os
import subprocess
import sys

import l2rec_kernels


def test_public_api_names():
    for name in l2rec_kernels.__all__:
        assert getattr(l2rec_kernels, name) is not None, name
    assert {"L2Rec", "FusedL2Rec", "dpmoe_linear", "route", "topk_items"} <= set(l2rec_kernels.__all__)


def test_import_does_not_import_triton_or_query_cuda():
    # TRITON_INTERPRET must be settable after `import l2rec_kernels`: triton reads it when it
    # is first imported, so the package must not import it (nor torch._dynamo, which does).
    code = (
        "import sys, torch\n"
        "calls = []\n"
        "torch.cuda.is_available = lambda: calls.append(1) or False\n"
        "import l2rec_kernels\n"
        "bad = [m for m in ('triton', 'torch._dynamo', 'l2rec_kernels._C') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert not calls, 'torch.cuda.is_available() called at import'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
