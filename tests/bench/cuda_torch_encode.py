"""Plain PyTorch TurboQuant encode (the baseline of cuda_encode_bench): the same work as the
tq4 / tq3 section encoder on the same shapes -- sign flip, rotation as a matmul with the 128x128
Hadamard matrix, norms, bucketize against the codebook boundaries, corrected scale, bit packing
into the word-major / token-minor planes -- in eager PyTorch on the GPU. Bandwidth counts input
bytes read plus encoded bytes written over the time (CUDA events), like the C bench.
Prints one JSON object per line.   python3 cuda_torch_encode.py [iters=5]"""
import json
import sys

import torch

D, H, T, S = 128, 8, 32768, 8  # 8 sections of 32768 tokens x 8 heads x d 128 (512 MiB fp16)
# Lloyd-Max centroids of N(0,1) (positive halves); the timing does not depend on their values.
CB = {4: [0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590],
      3: [0.245094, 0.756005, 1.343909, 2.151946]}


def hadamard(n, dev):
    h = torch.ones(1, 1, device=dev)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def pack(codes, w, shift):
    """codes [N, D] int64 -> [N, D*w/32] int32 words of the w-bit sub-plane of bits shift.."""
    per = 32 // w
    c = ((codes >> shift) & ((1 << w) - 1)).view(codes.shape[0], D // per, per)
    sh = torch.arange(per, device=codes.device, dtype=torch.int64) * w
    return (c << sh).sum(-1).to(torch.int64).bitwise_and(0xFFFFFFFF).to(torch.int32)


def encode(x, sign, had, bnd, cent, bits):
    xf = x.view(-1, D).float()
    ss = (xf * xf).sum(-1)
    norm = ss.sqrt()
    w = (xf * sign) @ had
    t = w / norm.clamp_min(1e-30)[:, None]
    codes = torch.bucketize(t, bnd, right=True)
    cv = cent[codes]
    scale = (norm / torch.sqrt((cv * cv).sum(-1) / D)).half()
    if bits == 3:
        planes = [pack(codes, 2, 0), pack(codes, 1, 2)]
    else:
        planes = [pack(codes, bits, 0)]
    # word-major, token-minor per (section, head)
    out = [p.view(S, T, H, -1).permute(0, 2, 3, 1).contiguous() for p in planes]
    sc = scale.view(S, T, H).permute(0, 2, 1).contiguous()
    return out, sc


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(S * T * H * D, device=dev, dtype=torch.float16, generator=g)
    sign = (torch.randint(0, 2, (D,), device=dev, generator=g) * 2 - 1).float()
    had = hadamard(D, dev)
    for bits in (4, 3):
        pos = torch.tensor(CB[bits], device=dev)
        cent = torch.cat([-pos.flip(0), pos])
        bnd = (cent[1:] + cent[:-1]) * 0.5
        for _ in range(2):
            encode(x, sign, had, bnd, cent, bits)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(iters):
            planes, sc = encode(x, sign, had, bnd, cent, bits)
        e1.record()
        torch.cuda.synchronize()
        t = e0.elapsed_time(e1) / 1e3 / iters
        in_b = x.numel() * 2
        out_b = sum(p.numel() * 4 for p in planes) + sc.numel() * 2
        print(json.dumps({"bench": "torch_encode", "preset": "tq4" if bits == 4 else "tq3",
                          "in_bytes": in_b, "out_bytes": out_b, "ms": round(t * 1e3, 3),
                          "gbps_rw": round((in_b + out_b) / t / 1e9, 1),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
