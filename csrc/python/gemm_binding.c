/* gemm_binding.c: qatfhe._core.matmul, the core's float32 matrix product
 * (gemm.h) on NumPy arrays, for benchmarks and tests of the kernel alone.
 * Like numpy.matmul it does not scan for NaN/inf: they propagate. */
#include "bindings.h"
#include "gemm.h"

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"a", "b", "transpose_a", NULL};
    PyObject *a_obj, *b_obj;
    int transpose_a = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|p:matmul", kwlist, &a_obj, &b_obj,
                                     &transpose_a))
        return NULL;
    PyArrayObject *a = qfpy_array(a_obj, "a", NPY_FLOAT32, 2, 0);
    if (!a)
        return NULL;
    PyArrayObject *b = qfpy_array(b_obj, "b", NPY_FLOAT32, 2, 0);
    if (!b) {
        Py_DECREF(a);
        return NULL;
    }
    /* A (m, k) is a, or the transpose of a (k, m), read through strides */
    int64_t m = PyArray_DIM(a, transpose_a ? 1 : 0), k = PyArray_DIM(a, transpose_a ? 0 : 1);
    int64_t n = PyArray_DIM(b, 1);
    if (PyArray_DIM(b, 0) != k) {
        PyErr_Format(PyExc_ValueError, "matmul: a%s is (%lld, %lld) and b is (%lld, %lld); "
                     "expected b to have %lld rows", transpose_a ? " transposed" : "",
                     (long long)m, (long long)k, (long long)PyArray_DIM(b, 0),
                     (long long)PyArray_DIM(b, 1), (long long)k);
        Py_DECREF(a);
        Py_DECREF(b);
        return NULL;
    }
    npy_intp dims[2] = {(npy_intp)m, (npy_intp)n};
    PyArrayObject *c = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (c) {
        const float *ap = PyArray_DATA(a), *bp = PyArray_DATA(b);
        float *cp = PyArray_DATA(c);
        int64_t a_rs = transpose_a ? 1 : k, a_cs = transpose_a ? m : 1;
        Py_BEGIN_ALLOW_THREADS
        qf_gemm(cp, n, ap, a_rs, a_cs, bp, n, m, n, k, 0);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return (PyObject *)c;
}

static PyMethodDef gemm_methods[] = {
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(a, b, transpose_a=False) -> float32 (m, n): a @ b (a.T @ b) in the core's fixed "
     "order: each element one running float32 sum over k in order, products rounded first."},
    {NULL, NULL, 0, NULL},
};

int qfpy_register_gemm(PyObject *module)
{
    return PyModule_AddFunctions(module, gemm_methods);
}
