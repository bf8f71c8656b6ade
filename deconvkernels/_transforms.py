"""torch.func transforms and forward-mode AD over the compiled ops.

``torch.library.register_autograd`` wraps an op's formulas in an ``autograd.Function`` whose
``forward`` takes ``ctx`` and that has no ``setup_context`` and no ``jvp``. functorch refuses
such a Function (``torch.func.grad``, ``jacrev``, ``vmap(grad(...))`` raise "it must override
the setup_context staticmethod": pytorch/pytorch#168393 and #179652), and forward-mode AD
(``torch.func.jvp``, ``torch.autograd.forward_ad``) passes through it without a tangent: the
outputs' tangents silently came back as zeros.

So while a functorch transform or a forward-AD level is active, :func:`apply` runs each
differentiable op through an ``autograd.Function`` built here from the same ``setup_context``
and ``backward`` that are registered with torch.library, plus a ``jvp``, with
``generate_vmap_rule``. Every op also gets a vmap rule (:func:`register_vmap_rules`) that
folds the vmapped dimension into the batch dimension N, so ``torch.vmap`` runs one batched
call instead of torch.library's per-sample loop. Outside transforms nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.autograd import forward_ad

Formula = Callable[..., Any]

# op overload packet -> the autograd.Function that carries its formulas under transforms.
_FUNCTIONS: dict[object, type[torch.autograd.Function]] = {}


def active() -> bool:
    """Whether a functorch transform or a forward-AD level is active.

    ``forward_ad._current_level`` is the level ``forward_ad.dual_level`` entered (-1 outside);
    torch exposes no public query for it. Dual tensors only exist inside such a level.
    """
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def save(ctx: Any, *tensors: torch.Tensor | None) -> None:
    """``save_for_backward`` and ``save_for_forward`` at once: the formulas' ``setup_context``
    serves both the torch.library registration (backward only) and the Functions here, whose
    ``jvp`` reads the same tensors from ``ctx.saved_tensors``."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def add_formulas(op: Any, setup_context: Formula, backward: Formula, jvp: Formula) -> None:
    """Build the transform-friendly ``autograd.Function`` of ``op`` (an overload packet).

    Its ``forward`` runs the op below autograd (as the torch.library kernel does), so the
    forward is the same kernel call either way.
    """

    def forward(*args: Any) -> Any:
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    name = "".join(part.title() for part in op.__name__.split("_")) + "Function"
    _FUNCTIONS[op] = type(
        name,
        (torch.autograd.Function,),
        {
            "__doc__": f"``torch.ops.deconvkernels.{op.__name__}`` under torch.func transforms.",
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
            "generate_vmap_rule": True,
        },
    )


class _IntList(list):
    """An ``int[]`` argument that functorch's pytrees take as one leaf, as they take an int.

    functorch flattens a Function's arguments into leaves: a plain list of two ints becomes
    two leaves of in_dims but one (None) tangent, and ``jvp`` under ``vmap`` (jacfwd,
    hessian) then fails to unflatten (``get_tangents_in_dims`` in
    torch/_functorch/autograd_function.py). A list subclass is no registered pytree node; the
    op's argument parser still reads it as a list.
    """

    __slots__ = ()


def apply(op: Any, *args: Any) -> Any:
    """Run ``op`` under an active transform: through its Function, or as it is when it has
    no differentiable input (the switch / index conversions)."""
    function = _FUNCTIONS.get(op)
    if function is None:
        return op(*args)
    return function.apply(*(_IntList(a) if isinstance(a, list | tuple) else a for a in args))


def function_for(op: Any) -> type[torch.autograd.Function]:
    """The Function :func:`apply` uses for ``op`` (tests)."""
    return _FUNCTIONS[op]


def add_tangents(*terms: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of the tangent terms that exist (a jvp of an op linear in several inputs)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


# ------------------------------------------------------------------------------ vmap rules


def _fold(t: torch.Tensor, bdim: int | None, batch: int) -> tuple[torch.Tensor, int]:
    """The vmapped tensor ``t`` with its vmapped dim merged into the batch dim N (a logical
    3-D ``(C, H, W)`` tensor gets the vmapped dim as N); an unbatched one is expanded first.
    Returns the tensor and the logical rank (3 or 4)."""
    if bdim is None:
        t = t.unsqueeze(0).expand(batch, *t.shape)
    else:
        t = t.movedim(bdim, 0)
    rank = t.dim() - 1
    return (t if rank == 3 else t.flatten(0, 1)), rank


def _unfold(out: torch.Tensor, batch: int, rank: int) -> torch.Tensor:
    """Inverse of :func:`_fold` on an op's output: the vmapped dim back in front."""
    return out if rank == 3 else out.unflatten(0, (batch, -1))


def _batched_loop(op: Any, info: Any, in_dims: Sequence[int | None], *args: Any) -> Any:
    """One call per vmapped index, stacked: for arguments the batch dim cannot absorb
    (a batched weight; gradients that sum over N)."""
    outs = []
    for b in range(info.batch_size):
        # (in_dims mirrors each argument's structure: a list argument has a list of Nones)
        sample = [
            a.select(d, b) if isinstance(d, int) else a
            for a, d in zip(args, in_dims, strict=True)
        ]
        outs.append(op(*sample))
    return torch.stack(outs), 0


def _folding_rule(op: Any, tensor_args: int) -> Callable[..., Any]:
    """A vmap rule that folds the first ``tensor_args`` arguments (same N, same logical
    rank) into the batch dim and calls ``op`` once."""

    def rule(info: Any, in_dims: Sequence[int | None], *args: Any) -> Any:
        folded, ranks = [], set()
        for t, d in zip(args[:tensor_args], in_dims[:tensor_args], strict=True):
            f, rank = _fold(t, d, info.batch_size)
            folded.append(f)
            ranks.add(rank)
        if len(ranks) != 1:  # mismatched ranks: let the op raise its own error per sample
            return _batched_loop(op, info, in_dims, *args)
        (rank,) = ranks
        out = op(*folded, *args[tensor_args:])
        if isinstance(out, tuple):
            return tuple(_unfold(o, info.batch_size, rank) for o in out), (0,) * len(out)
        return _unfold(out, info.batch_size, rank), 0

    return rule


def _weight_rule(op: Any, tensor_args: int, weight_args: Sequence[int]) -> Callable[..., Any]:
    """Fold like :func:`_folding_rule` when the arguments at ``weight_args`` (weight, bias)
    are not vmapped; loop otherwise."""
    fold = _folding_rule(op, tensor_args)

    def rule(info: Any, in_dims: Sequence[int | None], *args: Any) -> Any:
        if any(isinstance(in_dims[i], int) for i in weight_args):
            return _batched_loop(op, info, in_dims, *args)
        return fold(info, in_dims, *args)

    return rule


def register_vmap_rules(ops: Any) -> None:
    """vmap rules for every op of ``torch.ops.deconvkernels`` (the public namespace)."""
    lib = "deconvkernels::"
    for name in (
        "max_pool2d_with_switches",
        "switches_to_indices",
        "indices_to_switches",
    ):
        torch.library.register_vmap(lib + name, _folding_rule(getattr(ops, name).default, 1))
    for name in (
        "max_pool2d_with_switches_backward",
        "max_unpool2d_with_switches",
        "max_unpool2d_with_switches_backward",
    ):
        torch.library.register_vmap(lib + name, _folding_rule(getattr(ops, name).default, 2))

    # unpool_deconv2d(y, switches, weight, bias, ...): y and switches fold; a vmapped weight
    # or bias loops.
    torch.library.register_vmap(
        lib + "unpool_deconv2d", _weight_rule(ops.unpool_deconv2d.default, 2, (2, 3))
    )
    torch.library.register_vmap(
        lib + "unpool_deconv2d_backward_y",
        _weight_rule(ops.unpool_deconv2d_backward_y.default, 2, (2,)),
    )

    # The weight and bias gradients sum over N: each vmapped index is its own call.
    def loop(op: Any) -> Callable[..., Any]:
        return lambda info, in_dims, *args: _batched_loop(op, info, in_dims, *args)

    for name in ("unpool_deconv2d_backward_weight", "unpool_deconv2d_backward_bias"):
        torch.library.register_vmap(lib + name, loop(getattr(ops, name).default))
