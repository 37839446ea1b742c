"""fp16 baseline of cuda_attention_bench: PyTorch scaled_dot_product_attention for one query
token per sequence over an fp16 KV cache, 32 query heads, 8 KV heads (GQA through
enable_gqa=True: K and V are not repeated), d = 128, for the same (batch, context) shapes.
Every SDPA backend that accepts the call is timed (CUDA events, mean of `iters` after warm-up);
"best" is the fastest. Effective bandwidth = fp16 K and V bytes / time. JSON lines.
    [TQ_BENCH_Q_HEADS=32] python3 cuda_sdpa_bench.py [iters=50]"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(1, 32768), (1, 131072), (8, 32768), (32, 8192)]
NQ, NKV, D = int(os.environ.get("TQ_BENCH_Q_HEADS", "32")), 8, 128  # query heads as the tq bench
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def timeit(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / 1e3 / iters


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    for b, ctx in SHAPES:
        q = torch.randn(b, NQ, 1, D, device="cuda", dtype=torch.float16)
        k = torch.randn(b, NKV, ctx, D, device="cuda", dtype=torch.float16)
        v = torch.randn(b, NKV, ctx, D, device="cuda", dtype=torch.float16)
        kv_bytes = 2 * k.numel() * 2
        res = {}
        for name, be in [("default", None)] + list(BACKENDS.items()):
            def run(be=be):
                if be is None:
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                with sdpa_kernel(be):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            try:
                res[name] = timeit(run, iters if name != "math" else 5)
            except RuntimeError as e:  # backend refuses this shape or GQA
                res[name] = None
        ok = {n: t for n, t in res.items() if t is not None}
        best = min(ok, key=ok.get)
        print(json.dumps({"bench": "torch_sdpa", "batch": b, "context": ctx, "q_heads": NQ,
                          "kv_heads": NKV, "head_dim": D, "gqa": "enable_gqa=True",
                          "us": {n: (round(t * 1e6, 2) if t else None) for n, t in res.items()},
                          "best": best, "best_us": round(ok[best] * 1e6, 2),
                          "eff_gbps": round(kv_bytes / ok[best] / 1e9, 1),
                          "torch": torch.__version__}), flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
