/* prune_binding.c: the binding of the pruning mask kernels (csrc/prune.h).
 *
 *   _core.l1_unstructured_mask(weight, mask, amount) -> uint8 mask
 *   _core.fan_in_mask(weight, mask, max_non_zero)    -> uint8 mask
 * weight: float32 array of any shape (fan_in: at least 2-D, rows along the
 * first axis); mask: uint8 array of weight's shape holding 0/1, or None for
 * all kept.  The result has weight's shape.  qatfhe/prune.py is the user API. */
#include "bindings.h"

#include "../prune.h"

/* Convert weight and mask (None allowed), allocate the result and the
 * scratch (one uint64 per entry, or per entry of a row when per_row); on
 * failure everything is released and -1 returned with the exception set. */
static int prepare(PyObject *weight_obj, PyObject *mask_obj, int per_row,
                   PyArrayObject **weight, PyArrayObject **mask, PyArrayObject **out,
                   uint64_t **scratch)
{
    *mask = *out = NULL;
    *scratch = NULL;
    *weight = qfpy_array(weight_obj, "weight", NPY_FLOAT32, -1, 1);
    if (!*weight) return -1;
    int ndim = PyArray_NDIM(*weight);
    npy_intp n_scratch = PyArray_SIZE(*weight);
    if (per_row) {
        if (ndim < 2) {
            PyErr_Format(PyExc_ValueError, "weight must have at least 2 dimensions "
                         "(output rows first), got %d", ndim);
            goto fail;
        }
        n_scratch = PyArray_DIM(*weight, 0) > 0 ? n_scratch / PyArray_DIM(*weight, 0) : 0;
    }
    if (mask_obj != Py_None) {
        *mask = qfpy_array(mask_obj, "mask", NPY_UINT8, ndim, 0);
        if (!*mask) goto fail;
        if (!PyArray_SAMESHAPE(*mask, *weight)) {
            PyErr_SetString(PyExc_ValueError, "mask must have the shape of weight");
            goto fail;
        }
    }
    *out = (PyArrayObject *)PyArray_SimpleNew(ndim, PyArray_DIMS(*weight), NPY_UINT8);
    if (!*out) goto fail;
    *scratch = PyMem_Malloc((size_t)(n_scratch > 0 ? n_scratch : 1) * sizeof(uint64_t));
    if (!*scratch) {
        PyErr_NoMemory();
        goto fail;
    }
    return 0;
fail:
    Py_XDECREF(*weight);
    Py_XDECREF(*mask);
    Py_XDECREF(*out);
    *weight = *mask = *out = NULL;
    return -1;
}

static void release(PyArrayObject *weight, PyArrayObject *mask, uint64_t *scratch)
{
    PyMem_Free(scratch);
    Py_DECREF(weight);
    Py_XDECREF(mask);
}

/* The exception for a failed kernel call; amount_message explains QF_ERR_ARG
 * when the mask itself is fine. */
static void raise_prune_error(qf_status status, const uint8_t *mask, int64_t n,
                              const char *amount_message)
{
    int mask_ok = 1;
    for (int64_t i = 0; mask && i < n; i++) mask_ok &= mask[i] <= 1;
    if (status == QF_ERR_SHAPE)
        qfpy_raise(status, "weight is too large to prune: at most 2^32 - 1 entries "
                           "(per row for fan_in)");
    else if (status == QF_ERR_ARG && !mask_ok)
        qfpy_raise(status, "mask must hold only 0 (pruned) and 1 (kept)");
    else if (status == QF_ERR_ARG)
        qfpy_raise(status, amount_message);
    else
        qfpy_raise(status, NULL);
}

static PyObject *py_l1_unstructured_mask(PyObject *self, PyObject *args)
{
    PyObject *weight_obj, *mask_obj;
    long long amount;
    if (!PyArg_ParseTuple(args, "OOL:l1_unstructured_mask", &weight_obj, &mask_obj, &amount))
        return NULL;
    PyArrayObject *weight, *mask, *out;
    uint64_t *scratch;
    if (prepare(weight_obj, mask_obj, 0, &weight, &mask, &out, &scratch) < 0) return NULL;
    int64_t n = PyArray_SIZE(weight);
    const uint8_t *mask_in = mask ? (const uint8_t *)PyArray_DATA(mask) : NULL;
    qf_status status;
    Py_BEGIN_ALLOW_THREADS
    status = qf_prune_l1_unstructured((uint8_t *)PyArray_DATA(out), scratch,
                                      (const float *)PyArray_DATA(weight), mask_in, n, amount);
    Py_END_ALLOW_THREADS
    if (status != QF_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "amount must be in [0, %lld] (the entries the mask keeps), "
                 "got %lld", (long long)qf_prune_count_kept(mask_in, n), amount);
        raise_prune_error(status, mask_in, n, msg);
        Py_CLEAR(out);
    }
    release(weight, mask, scratch);
    return (PyObject *)out;
}

static PyObject *py_fan_in_mask(PyObject *self, PyObject *args)
{
    PyObject *weight_obj, *mask_obj;
    long long max_non_zero;
    if (!PyArg_ParseTuple(args, "OOL:fan_in_mask", &weight_obj, &mask_obj, &max_non_zero))
        return NULL;
    PyArrayObject *weight, *mask, *out;
    uint64_t *scratch;
    if (prepare(weight_obj, mask_obj, 1, &weight, &mask, &out, &scratch) < 0) return NULL;
    int64_t rows = PyArray_DIM(weight, 0);
    int64_t cols = rows > 0 ? PyArray_SIZE(weight) / rows : 0;
    const uint8_t *mask_in = mask ? (const uint8_t *)PyArray_DATA(mask) : NULL;
    qf_status status;
    Py_BEGIN_ALLOW_THREADS
    status = qf_prune_fan_in((uint8_t *)PyArray_DATA(out), scratch,
                             (const float *)PyArray_DATA(weight), mask_in, rows, cols,
                             max_non_zero);
    Py_END_ALLOW_THREADS
    if (status != QF_OK) {
        char msg[96];
        snprintf(msg, sizeof msg, "max_non_zero must be at least 1, got %lld", max_non_zero);
        raise_prune_error(status, mask_in, rows * cols, msg);
        Py_CLEAR(out);
    }
    release(weight, mask, scratch);
    return (PyObject *)out;
}

static PyMethodDef prune_methods[] = {
    {"l1_unstructured_mask", py_l1_unstructured_mask, METH_VARARGS,
     "l1_unstructured_mask(weight, mask, amount) -> uint8 mask: also mask the `amount` "
     "smallest |weight| among the entries mask keeps (None: all); ties: lower flat index first."},
    {"fan_in_mask", py_fan_in_mask, METH_VARARGS,
     "fan_in_mask(weight, mask, max_non_zero) -> uint8 mask: in every row (first axis) keep "
     "at most the max_non_zero largest |weight| among the entries mask keeps (None: all)."},
    {NULL, NULL, 0, NULL},
};

int qfpy_register_prune(PyObject *module)
{
    return PyModule_AddFunctions(module, prune_methods);
}
