"""Model-level benchmark: DeconvNet's training step on the extension against the reference.

``python -m deconvkernels.bench_model`` builds the paper-size DeconvNet (width 1, 224x224,
batch 2 by default) once and times a full SGD step (forward, loss, backward, update) on the
extension's ops and on the pure-PyTorch reference backend (``F.max_pool2d`` with int64
indices, ``F.max_unpool2d``, ``F.conv_transpose2d`` on the unpooled map), alternating them
(ABBA: ext, ref, ref, ext, ...) after a warm-up and keeping each one's minimum; float32 and
bfloat16 autocast. It also reports the bytes autograd keeps for the backward
(``saved_tensors_hooks``, distinct storages; parameters excluded, since both keep them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._backend import use_backend
from .bench_fused import saved_bytes
from .models import DeconvNet

__all__ = ["main", "saved_activation_bytes", "train_step_times"]

BACKENDS = ("extension", "reference")


def _step(model, optimizer, x, target, dtype: torch.dtype) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(x).float(), target)
    loss.backward()
    optimizer.step()


def saved_activation_bytes(model, x, target, dtype: torch.dtype, backend: str) -> int:
    """Bytes of the distinct non-parameter storages saved for the backward of one step."""

    def forward() -> torch.Tensor:
        with use_backend(backend):
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
                return F.cross_entropy(model(x).float(), target)

    return saved_bytes(forward, list(model.parameters()))


def train_step_times(
    model, x, target, dtype: torch.dtype, repeats: int, progress: bool = True
) -> dict[str, list[float]]:
    """Seconds per training step on each backend, ABBA-ordered, one warm-up step each."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    order = []
    for r in range(repeats):
        order += list(BACKENDS) if r % 2 == 0 else list(reversed(BACKENDS))
    bar = tqdm(total=len(order) + 2, desc=f"train step {str(dtype)[6:]}", disable=not progress,
               leave=False)
    def sync() -> None:  # a GPU step ends when its kernels do, not when they are queued
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    for backend in BACKENDS:  # warm-up: allocator, oneDNN primitives, huge pages
        with use_backend(backend):
            _step(model, optimizer, x, target, dtype)
        bar.update(1)
    sync()
    for backend in order:
        with use_backend(backend):
            t0 = time.perf_counter()
            _step(model, optimizer, x, target, dtype)
            sync()
            times[backend].append(time.perf_counter() - t0)
        bar.update(1)
    bar.close()
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deconvkernels.bench_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=4, help="timed steps per backend and dtype")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true",
                   help="model and input in channels_last (as `deconvnet train --channels-last`)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = DeconvNet(args.classes, width=args.width, input_size=args.size)
    model = model.to(device=device, memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=fmt)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    n_params = sum(q.numel() for q in model.parameters())
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"DeconvNet width {args.width}, {n_params / 1e6:.1f}M parameters, batch {args.batch} "
          f"x {args.size}x{args.size}, {layout}, {device}, {torch.get_num_threads()} threads")
    print("| dtype | step, extension (s) | step, reference (s) | reference/extension "
          "| saved, extension (MB) | saved, reference (MB) | extension/reference |")
    print("|---|---|---|---|---|---|---|")
    for name in args.dtype.split(","):
        dtype = getattr(torch, name.strip())
        times = train_step_times(model, x, target, dtype, args.repeats, not args.no_progress)
        saved = {b: saved_activation_bytes(model, x, target, dtype, b) for b in BACKENDS}
        ext, ref = min(times["extension"]), min(times["reference"])
        print(f"| {name} | {ext:.3f} | {ref:.3f} | {ref / ext:.3f}x | "
              f"{saved['extension'] / 2**20:.1f} | {saved['reference'] / 2**20:.1f} | "
              f"{saved['extension'] / saved['reference']:.3f}x |", flush=True)
    print("Step times: minimum of ABBA-alternated steps; saved: autograd's saved tensors "
          "(distinct storages, parameters excluded).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
