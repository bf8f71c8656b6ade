// C++ autograd nodes for the two pooling ops, used by their direct Python entries
// (eager_calls.cpp) when an input requires grad.
//
// Why not only the torch.library registration: register_autograd (deconvkernels/ops.py) wraps
// each call in a generated Python autograd.Function behind a Python kernel at the Autograd key,
// and a second Python layer runs for the backward op. One thread, a 1x1x4x4 input, a pool
// forward with x.requires_grad cost 37 us through it (PyTorch's max_pool2d: 4.3), forward +
// backward 90 us (PyTorch: 28). These nodes do what those formulas do, in C++: torchvision's
// way (csrc/ops/autograd). The registered Python formulas stay the ops' autograd for every other
// caller: torch.ops, torch.compile, opcheck, and the backward ops themselves, which these nodes
// call through the dispatcher so that double backward records them as before.
#include "pool_autograd.h"

#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "pool_op_handles.h"

namespace deconvkernels {

// Not in an anonymous namespace: the autograd node's name (grad_fn.name()) is
// torch::autograd::CppNode<deconvkernels::autograd::MaxPool2dWithSwitchesFunction>.
namespace autograd {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// The geometry (and a size) kept on the node, as saved_data holds them: one int list.
c10::IValue pack(const PoolGeometry& g, int64_t h, int64_t w) {
  return c10::IValue(std::vector<int64_t>{g.kernel[0], g.kernel[1], g.stride[0], g.stride[1],
                                          g.padding[0], g.padding[1], g.dilation[0],
                                          g.dilation[1], h, w});
}

struct Unpacked {
  PoolGeometry g;
  c10::SymInt size[2];
};

Unpacked unpack(const c10::IValue& packed) {
  const auto v = packed.toIntVector();
  TORCH_INTERNAL_ASSERT(v.size() == 10, "deconvkernels: bad saved pool geometry");
  return {{{v[0], v[1]}, {v[2], v[3]}, {v[4], v[5]}, {v[6], v[7]}},
          {c10::SymInt(v[8]), c10::SymInt(v[9])}};
}

// A backward op's call from a backward node. Without create_graph (grad mode off) the op's
// registered autograd kernel would only redispatch below autograd, in Python: skip it. With
// create_graph it runs, and records the backward op for double backward.
template <class Call>
Tensor call_from_backward(Call&& call) {
  if (!at::GradMode::is_enabled()) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call();
  }
  return call();
}

}  // namespace

class MaxPool2dWithSwitchesFunction
    : public torch::autograd::Function<MaxPool2dWithSwitchesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const PoolGeometry& g,
                               bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, switches] = pool_op().call(x, g.kernel, g.stride, g.padding, g.dilation, ceil_mode);
    ctx->mark_non_differentiable({switches});
    // The switches never get a gradient; y's is undefined when y was not used. Materialising
    // zeros for either would cost a pass over memory for nothing.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({switches});
    ctx->saved_data["geometry"] = pack(g, x.size(-2), x.size(-1));
    return {y, switches};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return {Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    const Unpacked u = unpack(ctx->saved_data["geometry"]);
    Tensor grad_x = call_from_backward([&] {
      return pool_backward_op().call(grad_y, saved[0], u.size, u.g.kernel, u.g.stride,
                                     u.g.padding, u.g.dilation);
    });
    return {grad_x, Tensor(), Tensor()};
  }
};

class MaxUnpool2dWithSwitchesFunction
    : public torch::autograd::Function<MaxUnpool2dWithSwitchesFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& y, const Tensor& switches,
                        int64_t out_h, int64_t out_w, const PoolGeometry& g) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const c10::SymInt size[2] = {c10::SymInt(out_h), c10::SymInt(out_w)};
    Tensor out = unpool_op().call(y, switches, size, g.kernel, g.stride, g.padding, g.dilation);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({switches});
    ctx->saved_data["geometry"] = pack(g, out_h, out_w);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_out = grads[0];
    variable_list result(5);  // y, switches, out_h, out_w, g: only y gets a gradient
    if (!grad_out.defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Unpacked u = unpack(ctx->saved_data["geometry"]);
    result[0] = call_from_backward([&] {
      return unpool_backward_op().call(grad_out, saved[0], u.g.kernel, u.g.stride, u.g.padding,
                                       u.g.dilation);
    });
    return result;
  }
};

}  // namespace autograd

using at::Tensor;
using autograd::MaxPool2dWithSwitchesFunction;
using autograd::MaxUnpool2dWithSwitchesFunction;
using torch::autograd::variable_list;

std::tuple<Tensor, Tensor> max_pool2d_with_switches_autograd(const Tensor& x,
                                                             const PoolGeometry& g,
                                                             bool ceil_mode) {
  variable_list out = MaxPool2dWithSwitchesFunction::apply(x, g, ceil_mode);
  return {std::move(out[0]), std::move(out[1])};
}

Tensor max_unpool2d_with_switches_autograd(const Tensor& y, const Tensor& switches,
                                           int64_t out_h, int64_t out_w,
                                           const PoolGeometry& g) {
  return MaxUnpool2dWithSwitchesFunction::apply(y, switches, out_h, out_w, g);
}

}  // namespace deconvkernels
