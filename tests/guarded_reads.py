"""Run by test_guarded_reads.py in a child process (a read past a buffer kills it).

Every CPU kernel variant pools inputs, unpools values and switches, and runs both backward
ops on tensors that end on the last byte before a page the process may not touch
(``mprotect(PROT_NONE)``): the AVX2 and AVX-512 kernels read whole vectors past a short row
while the buffer goes on (``end`` / ``readable`` in csrc/cpu/pool_kernels_avx2.h), and one
bound off by a vector reads into that page and dies. The results must equal those of the
same call on ordinary tensors. Linux only.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import sys

import torch

import deconvkernels as dk

_libc = ctypes.CDLL(None, use_errno=True)
PROT_NONE = 0  # <sys/mman.h>; the mmap module does not export it
VERBOSE = "-v" in sys.argv
_mappings: list[mmap.mmap] = []  # kept alive: the tensors below borrow their memory
_ops = torch.ops.deconvkernels


def guarded(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` (4-D, NCHW or channels_last) whose last byte lies just before a page
    that may not be read."""
    nbytes = t.numel() * t.element_size()
    page = mmap.PAGESIZE
    size = -(-nbytes // page) * page + page
    buf = mmap.mmap(-1, size)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    if _libc.mprotect(ctypes.c_void_p(base + size - page), ctypes.c_size_t(page), PROT_NONE):
        raise OSError(ctypes.get_errno(), "mprotect failed")
    _mappings.append(buf)
    flat = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=size - page - nbytes)
    channels_last = not t.is_contiguous()
    src = t.permute(0, 2, 3, 1) if channels_last else t  # the order of t's bytes
    g = flat.view(t.dtype).view(src.shape)
    g.copy_(src)
    return g.permute(0, 3, 1, 2) if channels_last else g


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, NaN payloads included (both sides are this extension's results; dkutil's
    assert_identical leaves payloads out because PyTorch canonicalises them)."""
    if a.dtype.is_floating_point:
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(bits), b.contiguous().view(bits)
    return torch.equal(a, b)


def cases():
    """(shape, layout): NCHW rows of every short width and a few long ones, heights even and
    odd; channels_last around the vector widths."""
    for w, h, (n, c) in itertools.product(
        [*range(2, 35), 46, 56, 66, 130], (2, 3, 6, 7), ((1, 1), (1, 3), (2, 5))
    ):
        yield (n, c, h, w), "nchw"
    for c, (h, w) in itertools.product(
        (1, 7, 8, 15, 16, 17, 31, 32, 33, 48, 64, 65), ((2, 2), (4, 6), (5, 3))
    ):
        yield (2, c, h, w), "channels_last"


# Other geometries (kernel, stride, padding, dilation): the generic kernels load whole vectors
# along a row, or across the channels of a pixel's tail, while the buffer goes on for them.
GENERIC = [(3, 2, 1, 1), (3, 2, 0, 1), (3, 1, 1, 1), (2, 1, 0, 1), (3, 2, 0, 2), (3, 3, 0, 1),
           (4, 4, 1, 1)]


def generic_cases():
    """(shape, layout, geometry) for the generic kernels."""
    for w, h, geo in itertools.product([*range(5, 40), 66, 67], (5, 6), GENERIC):
        yield (1, 2, h, w), "nchw", geo
    for c, geo in itertools.product((1, 3, 7, 8, 9, 31, 32, 33, 40), GENERIC):
        yield (2, c, 5, 6), "channels_last", geo


def check_generic(failures: list[str], isa: str, dtype: torch.dtype) -> int:
    checked = 0
    for shape, layout, (k, s, p, d) in generic_cases():
        x = torch.randn(shape).to(dtype)
        x[..., ::3, 1::4] = float("nan")
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        what = f"{isa} {dtype} {layout} {shape} k{k} s{s} p{p} d{d}"
        if VERBOSE:
            print(what, flush=True)
        y, sw = dk.max_pool2d_with_switches(x, k, s, p, d)
        gy, gsw = dk.max_pool2d_with_switches(guarded(x), k, s, p, d)
        if not (same_bits(gy, y) and same_bits(gsw, sw)):
            failures.append(f"pool {what}")
        # the unpool backward reads the switches of later windows (overlap) and the gradient
        geo = ([k, k], [s, s], [p, p], [d, d])
        grad = torch.randn(shape).to(dtype)
        if layout == "channels_last":
            grad = grad.contiguous(memory_format=torch.channels_last)
        grad_y = _ops.max_unpool2d_with_switches_backward(grad, sw, *geo)
        g_grad_y = _ops.max_unpool2d_with_switches_backward(guarded(grad), guarded(sw), *geo)
        if not same_bits(g_grad_y, grad_y):
            failures.append(f"unpool backward {what}")
        _mappings.clear()
        checked += 1
    return checked


def main() -> int:
    torch.manual_seed(0)
    failures = []
    checked = 0
    for isa in dk.available_cpu_isas():
        dk.set_cpu_isa(isa)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for shape, layout in cases():
                x = torch.randn(shape).to(dtype)
                x[..., ::3, 1::4] = float("nan")  # the exact paths too
                if layout == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                what = f"{isa} {dtype} {layout} {shape}"
                if VERBOSE:
                    print(what, flush=True)
                y, sw = dk.max_pool2d_with_switches(x, 2)
                gy, gsw = dk.max_pool2d_with_switches(guarded(x), 2)
                if not (same_bits(gy, y) and same_bits(gsw, sw)):
                    failures.append(f"pool {what}")
                out = dk.max_unpool2d_with_switches(y, sw, 2, output_size=shape[-2:])
                gout = dk.max_unpool2d_with_switches(
                    guarded(y), guarded(sw), 2, output_size=shape[-2:]
                )
                if not same_bits(gout, out):
                    failures.append(f"unpool {what}")
                # the backward ops: the gather reads whole vectors of both input rows
                g = torch.randn(shape).to(dtype)
                if layout == "channels_last":
                    g = g.contiguous(memory_format=torch.channels_last)
                geo = ([2, 2], [2, 2], [0, 0], [1, 1])
                grad_y = _ops.max_unpool2d_with_switches_backward(g, sw, *geo)
                g_grad_y = _ops.max_unpool2d_with_switches_backward(guarded(g), guarded(sw), *geo)
                if not same_bits(g_grad_y, grad_y):
                    failures.append(f"unpool backward {what}")
                grad_x = _ops.max_pool2d_with_switches_backward(y, sw, list(shape[-2:]), *geo)
                g_grad_x = _ops.max_pool2d_with_switches_backward(
                    guarded(y), guarded(sw), list(shape[-2:]), *geo
                )
                if not same_bits(g_grad_x, grad_x):
                    failures.append(f"pool backward {what}")
                # (the tensors hold their buffers: dropping the list lets the mappings go
                # with them, under the process's limit on mappings)
                _mappings.clear()
                checked += 1
            checked += check_generic(failures, isa, dtype)
    dk.set_cpu_isa(None)
    print(f"checked {checked} cases")
    for f in failures[:20]:
        print("MISMATCH", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
