// Typed dispatcher handles of the four pooling ops, looked up once. The direct Python entries
// (eager_calls.cpp) and the C++ autograd functions (pool_autograd.cpp) call the ops through
// these rather than through torch.ops, which boxes every argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>

#include <tuple>

namespace deconvkernels {

// The typed handle of the op `name` (its schema's overload "") for the C++ signature Sig.
template <class Sig>
c10::TypedOperatorHandle<Sig> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline const auto& pool_op() {
  static const auto op =
      typed_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                  at::IntArrayRef, at::IntArrayRef,
                                                  at::IntArrayRef, bool)>(
          "deconvkernels::max_pool2d_with_switches");
  return op;
}

inline const auto& pool_backward_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>(
          "deconvkernels::max_pool2d_with_switches_backward");
  return op;
}

inline const auto& unpool_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>(
          "deconvkernels::max_unpool2d_with_switches");
  return op;
}

inline const auto& unpool_backward_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>(
          "deconvkernels::max_unpool2d_with_switches_backward");
  return op;
}

}  // namespace deconvkernels
