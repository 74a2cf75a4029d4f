/* bindings.h: shared pieces of the CPython binding of the qatfhe core.
 *
 * The binding is thin: every function parses its arguments, converts and
 * checks buffers (dtype, ndim, shape, finiteness), releases the GIL around
 * one core call, and maps the returned qf_status to an exception through
 * qfpy_raise.  Each concept registers its types/functions from its own file. */
#ifndef QFPY_BINDINGS_H
#define QFPY_BINDINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#ifndef QFPY_IMPORT_ARRAY_HERE
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL qatfhe_core_ARRAY_API
#include <numpy/arrayobject.h>

#include "../status.h"

/* Raise the exception for status with message (or the status's own text when
 * message is NULL or empty); returns NULL for `return qfpy_raise(...)`.
 *   QF_ERR_NOMEM -> MemoryError; QF_ERR_UNSUPPORTED -> NotImplementedError;
 *   QF_ERR_STATE -> RuntimeError; QF_ERR_OVERFLOW -> OverflowError;
 *   QF_ERR_DIVERGED -> FloatingPointError;
 *   everything else -> ValueError. */
PyObject *qfpy_raise(qf_status status, const char *message);

/* A new reference to a C-contiguous array of dtype (NPY_FLOAT32, NPY_INT32,
 * NPY_INT64 ...) converted from obj, or NULL with TypeError/ValueError naming
 * `name`.  ndim >= 0 requires that many dimensions.  Numeric input of another
 * dtype is converted (float64 -> float32 ...); bool, complex, object and
 * string dtypes are refused with TypeError.  With check_finite, NaN or
 * infinity raises ValueError. */
PyArrayObject *qfpy_array(PyObject *obj, const char *name, int dtype, int ndim, int check_finite);

/* Registration of each concept's types and functions into the module. */
int qfpy_register_net(PyObject *module);
int qfpy_register_circuit(PyObject *module);
int qfpy_register_prune(PyObject *module);
int qfpy_register_gemm(PyObject *module);

#endif
