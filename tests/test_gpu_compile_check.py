"""``tools/gpu_compile_check.py``: its rules fire on bad kernels, its PTX reading is right,
and a real compile for sm_90a reads back plausible numbers.

Everything runs in a subprocess: the tool imports triton in compiled mode, while this test
process may run triton under the interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "gpu_compile_check.py")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


_RULES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tools")
    import gpu_compile_check as g
    good = {"target": "sm_90a", "kernel": "k", "case": "bf16 M=4096", "dtype": "bf16",
            "op": "dpmoe_linear",
            "kwargs": {"BLOCK_M": 128}, "seconds": 1.0, "shared": 1000, "regs": 100,
            "stack": 0, "matrix": "wgmma", "ldg_u16": 0, "ld128": 8, "lora_bytes": 16}
    variants = {
        "good": {},
        "smem": {"shared": 232449},
        "slow": {"seconds": 61.0},
        "spill": {"stack": 8},
        "no_wgmma": {"matrix": "mma"},
        "scalar_lora": {"lora_bytes": 2},
        "error": {"error": "RuntimeError: boom"},
        "fp32_no_wgmma": {"case": "fp32 M=4096", "dtype": "fp32", "matrix": "-"},
        "sm80_hmma": {"target": "sm_80", "matrix": "mma", "shared": 166912},
        "sm80_smem": {"target": "sm_80", "matrix": "mma", "shared": 166913},
        "topk_small_k_spill": {"op": "topk_items", "kwargs": {"LOG_K": 7}, "stack": 16},
        "topk_wide_k_spill": {"op": "topk_items", "kwargs": {"LOG_K": 10}, "stack": 16},
    }
    print(json.dumps({name: g.problems({**good, **change}) for name, change in variants.items()}))
""")


def test_rules_fail_what_they_should():
    proc = run_python(_RULES)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["good"] == [] and found["fp32_no_wgmma"] == [] and found["sm80_hmma"] == []
    assert found["topk_wide_k_spill"] == []  # spills are allowed above k = 128
    expected = {"smem": "shared memory", "slow": "compile took", "spill": "spills",
                "no_wgmma": "no wgmma", "scalar_lora": "scalar LoRA", "error": "compile error",
                "sm80_smem": "shared memory", "topk_small_k_spill": "spills"}
    for name, words in expected.items():
        assert len(found[name]) == 1 and words in found[name][0], (name, found[name])


_PTX = textwrap.dedent('''
    import sys
    sys.path.insert(0, "tools")
    import gpu_compile_check as g
    source = {10: "        at = tl.load(a_ptr + ks[:, None])", 11: "        xt = tl.load(x_ptr + r)",
              12: "            bt = tl.load(lb_ptr + b_rows)"}
    def ptx(*body):
        return "\\n".join(body)
    loc = lambda n: f"\\t.loc\\t1 {n} 14                        // _dpmoe_linear_triton.py:{n}:14"
    print(g.lora_load_bytes(ptx(loc(11), "ld.global.b16 { %rs1 }, [ %rd1 + 0 ];"), source))
    cp_async = "@%p1 cp.async.cg.shared.global [ %r1 + 0 ], [ %rd2 + 0 ], 0x10, %r2;"
    print(g.lora_load_bytes(ptx(loc(10), cp_async,
                                loc(12), "@%p2 ld.global.v2.b32 { %r3, %r4 }, [ %rd3 + 0 ];"), source))
    print(g.lora_load_bytes(ptx(loc(12), "@%p2 ld.global.v4.b32 { %r3, %r4, %r5, %r6 }, [ %rd3 + 0 ];",
                                loc(10), "@%p1 ld.global.b16 { %rs1 }, [ %rd1 + 0 ];"), source))
    # a load with a cache-eviction hint is still a load of its width
    print(g.lora_load_bytes(ptx(loc(10), "@%p1 ld.global.L1::evict_last.b16 { %rs1 }, [ %rd1 + 0 ];"),
                            source))
    # the columns read from the PTX: matrix instruction, scalar 16-bit and 128-bit global loads
    def counts(*body):
        c = g.ptx_instructions(ptx(*body))
        print(f"{c['matrix']},{c['ldg_u16']},{c['ld128']}")
    counts("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {...};", cp_async, cp_async,
           "@%p3 ld.global.L1::evict_last.b16 { %rs2 }, [ %rd4 + 0 ];", "ld.shared.v4.b32 {...};")
    counts("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...};",
           "ld.global.v2.b16 { %rs1, %rs2 }, [ %rd1 + 0 ];", "ld.global.v4.b32 {...}, [ %rd2 + 0 ];")
    counts("ld.global.b32 { %r1 }, [ %rd1 + 0 ];")
''')


def test_lora_load_width_and_load_counts_from_ptx():
    proc = run_python(_PTX)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "8", "2", "2", "wgmma,1,2", "mma,0,1", "-,0,0"]


def test_smoke_compile_for_hopper(tmp_path):
    """One real specialisation of two kernels through their launchers, for sm_90a."""
    out = tmp_path / "table.md"
    proc = run_python("", TOOL, "--ops", "route,topk_items", "--targets", "sm_90a", "--first", "1",
                      "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| sm_90a")]
    assert sorted(r[2].strip() for r in rows) == ["_route_kernel", "_topk_slice_kernel"]
    for r in rows:
        regs, stack, smem = int(r[5]), int(r[6]), int(r[7])
        assert 0 < regs <= 255 and stack == 0 and 0 <= smem <= 232_448
    assert "**PASSED**" in out.read_text()
