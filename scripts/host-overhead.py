#!/usr/bin/env python3
"""Host time of an eager PyTorch GPT layer, per operator: the framework cost a GPU waits for
when its kernels are shorter than the host's dispatch (the simulator's `host_op_overhead`).

A Megatron-style pre-LayerNorm GPT block (LayerNorm, fused QKV linear, QK^T, causal mask and
softmax, dropout, P.V, output linear, dropout + residual, LayerNorm, linear, GeLU, linear,
dropout + residual) on tensors so small (hidden 64, sequence 16, batch 1) that the arithmetic is
negligible: the time left is Python, autograd and the dispatcher. It prints the median host
time of a forward and of a backward pass of the layer, and that time over the 13 ops the
simulator's GPT block has (`pangu_model::ops`: ln1, qkv_proj, attn_scores, softmax,
attn_dropout, attn_context, attn_out, attn residual, ln2, ffn_up, gelu, ffn_down, ffn residual):
the calibration files' `host_forward_op` and `host_backward_op`. It runs on the CPU; on a GPU
the same host work also issues the kernel launches (cudaLaunchKernel), which this leaves out,
so the figures are a lower bound.

    python3 scripts/host-overhead.py [--repeats 200]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)

# Ops of the simulator's GPT block with dropout (see the module docstring).
SIM_BLOCK_OPS = 13


class Block(torch.nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(h)
        self.qkv = torch.nn.Linear(h, 3 * h)
        self.proj = torch.nn.Linear(h, h)
        self.ln2 = torch.nn.LayerNorm(h)
        self.fc1 = torch.nn.Linear(h, 4 * h)
        self.fc2 = torch.nn.Linear(4 * h, h)

    def forward(self, x, mask):
        s, b, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.reshape(s, b * self.heads, d).transpose(0, 1)
        k = k.reshape(s, b * self.heads, d).transpose(0, 1)
        v = v.reshape(s, b * self.heads, d).transpose(0, 1)
        scores = torch.baddbmm(
            torch.empty(b * self.heads, s, s), q, k.transpose(1, 2), beta=0.0, alpha=d**-0.5
        )
        p = F.dropout(torch.softmax(scores.masked_fill(mask, -10000.0), dim=-1), 0.1)
        ctx = torch.bmm(p, v).transpose(0, 1).reshape(s, b, h)
        x = x + F.dropout(self.proj(ctx), 0.1)
        y = self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x + F.dropout(y, 0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args()
    h, heads, s = 64, 4, 16
    block = Block(h, heads)
    x = torch.randn(s, 1, h, requires_grad=True)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
    for _ in range(20):
        block(x, mask).sum().backward()
    fwd, bwd = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = block(x, mask).sum()
        t1 = time.perf_counter()
        out.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    f, b = statistics.median(fwd), statistics.median(bwd)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "layer_forward_us": round(f * 1e6, 1),
                "layer_backward_us": round(b * 1e6, 1),
                "host_forward_op_us": round(f * 1e6 / SIM_BLOCK_OPS, 1),
                "host_backward_op_us": round(b * 1e6 / SIM_BLOCK_OPS, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
