// Direct Python entries of the two pool ops for plain eager calls (see eager_calls.cpp).
#pragma once

#include <Python.h>

namespace deconvkernels {

// _C.max_pool2d_eager(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode) -> (y, switches)
PyObject* py_max_pool2d_eager(PyObject* self, PyObject* args);
// _C.max_unpool2d_eager(y, switches, H, W, kh, kw, sh, sw, ph, pw, dh, dw) -> out
PyObject* py_max_unpool2d_eager(PyObject* self, PyObject* args);

}  // namespace deconvkernels
