// Direct Python entries of max_pool2d_with_switches and max_unpool2d_with_switches for plain
// eager calls: the typed dispatcher call, as the Python path (`torch.ops`) makes it, without
// the boxing. One thread, a 1x1x2x2 input, us a call through the public function: 11.0
// through torch.ops, 1.9 here for the op itself (PyTorch's own binding of its pool: 2.8); on
// DeconvNet's 4x512x14x14 maps that is a fifth of the call. When grad mode is on and the
// input requires grad, the call goes through the C++ autograd nodes of pool_autograd.cpp;
// otherwise straight below autograd.
//
// The dispatcher still runs every kernel, device and Python dispatch mode as before (FakeTensor
// and TorchDispatchMode included); what it skips is Python-level: __torch_function__ of
// tensor subclasses and TorchFunctionModes, torch.compile's tracing, functorch transforms.
// deconvkernels/ops.py therefore takes this path only for plain tensors, outside those. The
// GIL is released while the op runs, as torch's bindings do.
#include "eager_calls.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/SymInt.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <tuple>

#include "pool_autograd.h"
#include "pool_op_handles.h"

namespace deconvkernels {

namespace {

using at::Tensor;

// The GIL released for the scope (re-taken on the way out, exceptions included).
class GilReleased {
 public:
  GilReleased() : state_(PyEval_SaveThread()) {}
  ~GilReleased() { PyEval_RestoreThread(state_); }
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;

 private:
  PyThreadState* state_;
};

// The tensor behind a Python object, or nullptr with a TypeError set.
const Tensor* tensor_arg(PyObject* obj, const char* name) {
  if (!THPVariable_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s must be a torch.Tensor", name);
    return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

}  // namespace

PyObject* py_max_pool2d_eager(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* x_obj = nullptr;
  std::array<long long, 8> g{};  // kh kw sh sw ph pw dh dw
  int ceil_mode = 0;
  if (!PyArg_ParseTuple(args, "OLLLLLLLLp", &x_obj, &g[0], &g[1], &g[2], &g[3], &g[4], &g[5],
                        &g[6], &g[7], &ceil_mode)) {
    return nullptr;
  }
  const Tensor* x = tensor_arg(x_obj, "x");
  if (x == nullptr) return nullptr;
  const PoolGeometry geo{{g[0], g[1]}, {g[2], g[3]}, {g[4], g[5]}, {g[6], g[7]}};
  std::tuple<Tensor, Tensor> out;
  {
    GilReleased no_gil;
    if (at::GradMode::is_enabled() && x->requires_grad()) {
      out = max_pool2d_with_switches_autograd(*x, geo, ceil_mode != 0);
    } else {
      at::AutoDispatchBelowAutograd below_autograd;
      out = pool_op().call(*x, geo.kernel, geo.stride, geo.padding, geo.dilation,
                           ceil_mode != 0);
    }
  }
  return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(std::get<0>(out))),
                       THPVariable_Wrap(std::move(std::get<1>(out))));
  END_HANDLE_TH_ERRORS
}

PyObject* py_max_unpool2d_eager(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* y_obj = nullptr;
  PyObject* switches_obj = nullptr;
  std::array<long long, 10> g{};  // H W kh kw sh sw ph pw dh dw
  if (!PyArg_ParseTuple(args, "OOLLLLLLLLLL", &y_obj, &switches_obj, &g[0], &g[1], &g[2],
                        &g[3], &g[4], &g[5], &g[6], &g[7], &g[8], &g[9])) {
    return nullptr;
  }
  const Tensor* y = tensor_arg(y_obj, "y");
  if (y == nullptr) return nullptr;
  const Tensor* switches = tensor_arg(switches_obj, "switches");
  if (switches == nullptr) return nullptr;
  const PoolGeometry geo{{g[2], g[3]}, {g[4], g[5]}, {g[6], g[7]}, {g[8], g[9]}};
  Tensor out;
  {
    GilReleased no_gil;
    if (at::GradMode::is_enabled() && y->requires_grad()) {
      out = max_unpool2d_with_switches_autograd(*y, *switches, g[0], g[1], geo);
    } else {
      const c10::SymInt size[2] = {c10::SymInt(g[0]), c10::SymInt(g[1])};
      at::AutoDispatchBelowAutograd below_autograd;
      out = unpool_op().call(*y, *switches, size, geo.kernel, geo.stride, geo.padding,
                             geo.dilation);
    }
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

}  // namespace deconvkernels
