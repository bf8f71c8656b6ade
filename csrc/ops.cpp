// The op schemas (namespace deconvkernels) and the Python module `deconvkernels._C`.
// Kernels are registered per device in cpu/ and cuda/; fake kernels and autograd in
// deconvkernels/ops.py through torch.library.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/emulator_switches.h"
#include "kernels/common.h"
#include "cpu/streaming_stores.h"
#include "eager_calls.h"

#ifndef DK_BUILD_CUDA
#define DK_BUILD_CUDA 0
#endif
#ifndef DK_CUDA_ARCHS
#define DK_CUDA_ARCHS ""
#endif
#ifndef DK_CPU_ISAS
#define DK_CPU_ISAS "DEFAULT"
#endif
#ifndef DK_TORCH_VERSION
#define DK_TORCH_VERSION ""
#endif
#ifndef DK_CUDA_VERSION
#define DK_CUDA_VERSION ""
#endif

namespace {

// Pooling geometry arguments, in the order every pooling op takes them.
#define DK_POOL_ARGS "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation"

void define_pool_ops(torch::Library& m, const std::string& prefix) {
  m.def(
      (prefix + "max_pool2d_with_switches(Tensor x, " DK_POOL_ARGS
                ", bool ceil_mode) -> (Tensor, Tensor)")
          .c_str());
  m.def(
      (prefix + "max_pool2d_with_switches_backward(Tensor grad_y, Tensor switches, "
                "SymInt[2] input_size, " DK_POOL_ARGS ") -> Tensor")
          .c_str());
  m.def(
      (prefix + "max_unpool2d_with_switches(Tensor y, Tensor switches, SymInt[2] output_size, "
                DK_POOL_ARGS ") -> Tensor")
          .c_str());
  m.def(
      (prefix + "max_unpool2d_with_switches_backward(Tensor grad_output, Tensor switches, "
                DK_POOL_ARGS ") -> Tensor")
          .c_str());
  m.def(
      (prefix + "switches_to_indices(Tensor switches, SymInt[2] input_size, " DK_POOL_ARGS
                ") -> Tensor")
          .c_str());
  m.def(
      (prefix + "indices_to_switches(Tensor indices, SymInt[2] input_size, " DK_POOL_ARGS
                ") -> Tensor")
          .c_str());
}

// The fused unpool + transposed convolution: unpool geometry, then the deconvolution's.
#define DK_UD_ARGS                                                                        \
  "SymInt[2] output_size, int[2] pool_kernel_size, int[2] pool_stride, "                  \
  "int[2] pool_padding, int[2] pool_dilation, int[2] stride, int[2] padding, "             \
  "int[2] output_padding, int groups, int[2] dilation"

void define_unpool_deconv_ops(torch::Library& m, const std::string& prefix) {
  m.def((prefix + "unpool_deconv2d(Tensor y, Tensor switches, Tensor weight, Tensor? bias, "
                  DK_UD_ARGS ") -> Tensor")
            .c_str());
  m.def((prefix + "unpool_deconv2d_backward_y(Tensor grad_output, Tensor switches, "
                  "Tensor weight, " DK_UD_ARGS ") -> Tensor")
            .c_str());
  m.def((prefix + "unpool_deconv2d_backward_weight(Tensor grad_output, Tensor y, "
                  "Tensor switches, int[2] kernel_size, " DK_UD_ARGS ") -> Tensor")
            .c_str());
  m.def((prefix + "unpool_deconv2d_backward_bias(Tensor grad_output) -> Tensor").c_str());
}

}  // namespace

TORCH_LIBRARY(deconvkernels, m) {
  define_pool_ops(m, "");
  define_unpool_deconv_ops(m, "");
  // Test-only: the CUDA kernels run on CPU tensors by the emulator (cpu/emulated_ops.cpp).
  define_pool_ops(m, "_emulated_");
  define_unpool_deconv_ops(m, "_emulated_");
}

// ------------------------------------------------------------------ Python module

namespace {

PyObject* string_list(const std::vector<std::string>& items) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(items.size()));
  for (size_t i = 0; i < items.size(); ++i)
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyUnicode_FromString(items[i].c_str()));
  return list;
}

PyObject* py_build_info(PyObject*, PyObject*) {
  return Py_BuildValue(
      "{s:O,s:s,s:s,s:s,s:s}", "cuda_compiled", DK_BUILD_CUDA ? Py_True : Py_False,
      "cuda_archs", DK_CUDA_ARCHS, "cuda_version", DK_CUDA_VERSION, "cpu_isas_compiled",
      DK_CPU_ISAS, "torch_version", DK_TORCH_VERSION);
}

PyObject* py_cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(
      deconvkernels::cpu::isa_name(deconvkernels::cpu::current_isa()).c_str());
}

PyObject* py_available_cpu_isas(PyObject*, PyObject*) {
  return string_list(deconvkernels::cpu::available_isas());
}

PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  try {
    return PyUnicode_FromString(deconvkernels::cpu::set_isa(name).c_str());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* py_streaming_threshold(PyObject*, PyObject*) {
  return PyLong_FromLongLong(deconvkernels::cpu::streaming_threshold());
}

PyObject* py_set_streaming_threshold(PyObject*, PyObject* arg) {
  const long long bytes = PyLong_AsLongLong(arg);
  if (bytes == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLongLong(deconvkernels::cpu::set_streaming_threshold(bytes));
}

PyObject* py_set_emulator_fast_unravel(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(deconvkernels::cpu::emulator_fast_unravel().exchange(on != 0));
}

// fast_div(n, make_fast_divider(d)) for a test against n // d.
PyObject* py_fast_divide(PyObject*, PyObject* args) {
  long long n = 0, d = 0;
  if (!PyArg_ParseTuple(args, "LL", &n, &d)) return nullptr;
  if (n < 0 || n >= (1LL << 31) || d < 1 || d > (1LL << 31)) {
    PyErr_SetString(PyExc_ValueError, "fast_divide needs 0 <= n < 2**31 and 1 <= d <= 2**31");
    return nullptr;
  }
  return PyLong_FromUnsignedLong(deconvkernels::fast_div(
      static_cast<uint32_t>(n), deconvkernels::make_fast_divider(d)));
}

PyMethodDef methods[] = {
    {"max_pool2d_eager", deconvkernels::py_max_pool2d_eager, METH_VARARGS,
     "max_pool2d_with_switches below autograd, without torch.ops' boxing (ops.py decides when)."},
    {"max_unpool2d_eager", deconvkernels::py_max_unpool2d_eager, METH_VARARGS,
     "max_unpool2d_with_switches below autograd, without torch.ops' boxing (ops.py decides "
     "when)."},
    {"build_info", py_build_info, METH_NOARGS, "What this extension was built with."},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU kernel variant in use."},
    {"available_cpu_isas", py_available_cpu_isas, METH_NOARGS,
     "CPU kernel variants compiled in and runnable here."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O,
     "Force a CPU kernel variant by name; '' returns to the automatic choice."},
    {"streaming_threshold", py_streaming_threshold, METH_NOARGS,
     "Bytes a CPU pooling call must touch before it streams its outputs (-1: never)."},
    {"set_streaming_threshold", py_set_streaming_threshold, METH_O,
     "Set that threshold (0: always; negative: the default); returns the previous one."},
    {"set_emulator_fast_unravel", py_set_emulator_fast_unravel, METH_O,
     "Let the CUDA emulator decode element numbers with 32-bit fast division (the default, "
     "as on a GPU) or not; returns the previous setting."},
    {"fast_divide", py_fast_divide, METH_VARARGS,
     "n // d through the CUDA kernels' fast divider (tests)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "deconvkernels compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&module_def);
}
