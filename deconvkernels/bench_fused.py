"""Benchmark report of the fused unpool + transposed convolution against the stock chain.

``python -m deconvkernels.bench_fused`` times, at DeconvNet's five decoder layers that start
with an unpool (batch 2 by default), ``unpool_deconv2d`` against ``F.max_unpool2d`` followed by
``F.conv_transpose2d`` in the same process (alternating the two, keeping each one's
minimum), pass by pass:

* forward;
* grad-input (ours: the pooled values' gradient; the chain: ``conv2d`` of the gradient, then
  the unpool's gather);
* grad-weight (ours against ``aten.convolution_backward`` on the unpooled map);
* forward + backward through autograd;

each as a ratio (chain time / ours: above 1 we are faster) and as "useful" GFLOP/s, the
multiply-adds that touch non-zero unpooled values (a quarter of the dense count after a 2x2
unpool), next to the dense rate the chain achieves. It also reports the bytes each keeps
for the backward (``saved_tensors_hooks``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import deconvkernels as dk

from .bench import bench_device, geomean, machine_info, measure_abba

#: (C_in, C_out, unpooled size) of the first deconvolution of each decoder stage.
DECODER_LAYERS: tuple[tuple[int, int, int], ...] = (
    (512, 512, 14),
    (512, 512, 28),
    (256, 256, 56),
    (128, 128, 112),
    (64, 64, 224),
)
PASSES = ("forward", "grad_input", "grad_weight", "fwd_bwd")


@dataclass
class FusedRow:
    layer: tuple[int, int, int]
    dtype: str
    step: str
    ours_ms: float
    chain_ms: float
    useful_gflops: float  # ours, sparse multiply-adds x 2 / time
    chain_dense_gflops: float  # the chain, dense multiply-adds x 2 / time

    @property
    def ratio(self) -> float:
        return self.chain_ms / self.ours_ms


def _inputs(
    layer: tuple[int, int, int], batch: int, dtype: torch.dtype, device: torch.device | str = "cpu"
):
    cin, cout, size = layer
    x = torch.randn(batch, cin, size, size, device=device)
    y, switches = dk.max_pool2d_with_switches(x, 2)
    y_t, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    w = (torch.randn(cin, cout, 3, 3, device=device) * 0.01).to(dtype)
    b = torch.randn(cout, device=device).to(dtype)
    g = torch.randn(batch, cout, size, size, device=device).to(dtype)
    return y.to(dtype), switches, y_t.to(dtype), indices, w, b, g


def _steps(
    layer, batch, dtype, device: torch.device | str = "cpu"
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    cin, cout, size = layer
    y, sw, y_t, idx, w, b, g = _inputs(layer, batch, dtype, device)
    ops = torch.ops.deconvkernels
    geo = [[size, size], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [1, 1], [0, 0], 1, [1, 1]]
    unpooled = F.max_unpool2d(y_t, idx, 2, 2, output_size=(size, size))

    def ours_fwd_bwd():
        yy, ww, bb = (t.detach().requires_grad_() for t in (y, w, b))
        out = dk.unpool_deconv2d(yy, sw, ww, bb, output_size=(size, size), padding=1)
        torch.autograd.grad(out, (yy, ww, bb), g)

    def chain_fwd_bwd():
        yy, ww, bb = (t.detach().requires_grad_() for t in (y_t, w, b))
        u = F.max_unpool2d(yy, idx, 2, 2, output_size=(size, size))
        out = F.conv_transpose2d(u, ww, bb, padding=1)
        torch.autograd.grad(out, (yy, ww, bb), g)

    return {
        "forward": (
            lambda: ops.unpool_deconv2d(y, sw, w, b, *geo),
            lambda: F.conv_transpose2d(
                F.max_unpool2d(y_t, idx, 2, 2, output_size=(size, size)), w, b, padding=1
            ),
        ),
        "grad_input": (
            lambda: ops.unpool_deconv2d_backward_y(g, sw, w, *geo),
            lambda: F.conv2d(g, w, padding=1).flatten(2).gather(2, idx.flatten(2)),
        ),
        "grad_weight": (
            lambda: ops.unpool_deconv2d_backward_weight(g, y, sw, [3, 3], *geo),
            lambda: torch.ops.aten.convolution_backward(
                g, unpooled, w, None, [1, 1], [1, 1], [1, 1], True, [0, 0], 1,
                [False, True, False],
            ),
        ),
        "fwd_bwd": (ours_fwd_bwd, chain_fwd_bwd),
    }


def saved_bytes(
    fn: Callable[[], torch.Tensor], parameters: Sequence[torch.Tensor] = ()
) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of ``fn()``.

    Storages of ``parameters`` (the weight and bias, which live anyway) are not counted:
    what is left is the activation memory the layer adds.
    """
    seen: dict[int, int] = {}
    skip = {p.untyped_storage().data_ptr() for p in parameters}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def saved_bytes_ratio(layer, batch, dtype, device: torch.device | str = "cpu") -> tuple[int, int]:
    """(ours, chain) activation bytes saved for the backward at one layer (weights excluded)."""
    cin, cout, size = layer
    y, sw, y_t, idx, w, b, _ = _inputs(layer, batch, dtype, device)
    yy, ww, bb = (t.requires_grad_() for t in (y, w, b))
    ours = saved_bytes(
        lambda: dk.unpool_deconv2d(yy, sw, ww, bb, output_size=(size, size), padding=1),
        (ww, bb),
    )
    yt = y_t.requires_grad_()
    chain = saved_bytes(
        lambda: F.conv_transpose2d(
            F.max_unpool2d(yt, idx, 2, 2, output_size=(size, size)), ww, bb, padding=1
        ),
        (ww, bb),
    )
    return ours, chain


def run_report(
    batch: int = 2,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    layers: Sequence[tuple[int, int, int]] = DECODER_LAYERS,
    repeats: int = 3,
    progress: bool = True,
    min_sample_s: float = 0.1,
    device: torch.device | str = "cpu",
) -> list[FusedRow]:
    """Time every pass at every layer and dtype; returns one row per (dtype, layer, pass)."""
    device = bench_device(device)
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for layer in layers:
            cin, cout, size = layer
            useful = 2 * batch * cin * (size // 2) ** 2 * 9 * cout  # sparse multiply-adds x 2
            for step, (ours, chain) in _steps(layer, batch, dtype, device).items():
                if progress:
                    print(f"  {dtype_name} {layer} {step}", file=sys.stderr, flush=True)
                t_ours, t_chain = measure_abba(
                    [ours, chain], device, repeats, warmup=1,
                    min_sample_s=min_sample_s,
                )
                o, c = min(t_ours), min(t_chain)
                flops = useful * (3 if step == "fwd_bwd" else 1)
                rows.append(FusedRow(
                    layer, dtype_name, step, o * 1e3, c * 1e3, flops / o / 1e9,
                    4 * flops / c / 1e9,
                ))
    return rows


def format_report(
    rows: Sequence[FusedRow], memory: Sequence[tuple], batch: int, device: str = "cpu"
) -> str:
    meta = machine_info(device)
    lines = ["# deconvkernels fused unpool + deconvolution report", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [f"- batch {batch}; 3x3 deconvolution, padding 1, after a 2x2/2 unpool"]
    if str(device).startswith("cuda") and torch.backends.cudnn.allow_tf32:
        lines += ["- the float32 chain runs cuDNN with TF32 (PyTorch's default for "
                  "convolutions); ours computes in full float32"]
    lines += [""]
    lines += [
        "| layer (C_in->C_out @ unpooled) | dtype | step | ours (ms) | chain (ms) | chain/ours "
        "| useful GFLOP/s (ours) | dense GFLOP/s (chain) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cin, cout, size = r.layer
        lines.append(
            f"| {cin}->{cout} @{size} | {r.dtype} | {r.step} | {r.ours_ms:.3f} | "
            f"{r.chain_ms:.3f} | {r.ratio:.2f} | {r.useful_gflops:.0f} | "
            f"{r.chain_dense_gflops:.0f} |"
        )
    lines += ["", "geo-mean chain/ours:", ""]
    for dtype in sorted({r.dtype for r in rows}):
        for step in PASSES:
            sel = [r.ratio for r in rows if r.dtype == dtype and r.step == step]
            if sel:
                lines.append(
                    f"- {dtype} {step}: **{geomean(sel):.2f}** (min {min(sel):.2f})"
                )
    if memory:
        lines += [
            "",
            "Activation memory kept for the backward (the weight, kept by both, not counted):",
            "",
            "| layer | saved for backward, ours (MB) | chain (MB) | ours/chain |",
            "|---|---:|---:|---:|",
        ]
        for layer, ours, chain in memory:
            cin, cout, size = layer
            lines.append(
                f"| {cin}->{cout} @{size} | {ours / 1e6:.2f} | {chain / 1e6:.2f} | "
                f"{ours / chain:.3f} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--min-sample-ms", type=float, default=100.0,
        help="each sample runs back-to-back calls for at least this long (default 100)",
    )
    p.add_argument("--quick", action="store_true", help="two layers, float32 only")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: measure the decoder layers and print the report."""
    args = _parser().parse_args(argv)
    layers = DECODER_LAYERS[1:3] if args.quick else DECODER_LAYERS
    dtypes = ["float32"] if args.quick else args.dtype.split(",")
    rows = run_report(
        args.batch, dtypes, layers, args.repeats, not args.no_progress, args.min_sample_ms / 1e3,
        args.device,
    )
    memory = [
        (layer, *saved_bytes_ratio(layer, args.batch, torch.float32, args.device))
        for layer in layers
    ]
    print(format_report(rows, memory, args.batch, args.device))
    return 0 if all(math.isfinite(r.ratio) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
