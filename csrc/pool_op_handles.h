// Typed dispatcher handles of the four pooling ops, looked up once. The direct Python entries
// (eager_calls.cpp) and the C++ autograd functions (pool_autograd.cpp) call the ops through
// these rather than through torch.ops, which boxes every argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>

#include <tuple>

namespace deconvkernels {

inline const auto& pool_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvkernels::max_pool2d_with_switches", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                    at::IntArrayRef, at::IntArrayRef,
                                                    at::IntArrayRef, bool)>();
  return op;
}

inline const auto& pool_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvkernels::max_pool2d_with_switches_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef)>();
  return op;
}

inline const auto& unpool_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvkernels::max_unpool2d_with_switches", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef)>();
  return op;
}

inline const auto& unpool_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvkernels::max_unpool2d_with_switches_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op;
}

}  // namespace deconvkernels
