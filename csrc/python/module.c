/* module.c: the qatfhe._core extension module: init and shared helpers. */
#define QFPY_IMPORT_ARRAY_HERE
#include "bindings.h"

PyObject *qfpy_raise(qf_status status, const char *message)
{
    PyObject *type = PyExc_ValueError;
    if (status == QF_ERR_NOMEM) type = PyExc_MemoryError;
    else if (status == QF_ERR_UNSUPPORTED) type = PyExc_NotImplementedError;
    else if (status == QF_ERR_STATE) type = PyExc_RuntimeError;
    else if (status == QF_ERR_OVERFLOW) type = PyExc_OverflowError;
    else if (status == QF_ERR_DIVERGED) type = PyExc_FloatingPointError;
    if (status == QF_ERR_NOMEM && (!message || !message[0]))
        return PyErr_NoMemory();
    PyErr_SetString(type, (message && message[0]) ? message : qf_status_string(status));
    return NULL;
}

static int dtype_is_numeric(PyArray_Descr *descr)
{
    int t = descr->type_num;
    return PyTypeNum_ISINTEGER(t) || PyTypeNum_ISFLOAT(t);
}

PyArrayObject *qfpy_array(PyObject *obj, const char *name, int dtype, int ndim, int check_finite)
{
    PyArrayObject *src = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!src) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a numeric array, got %.100s",
                     name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (!dtype_is_numeric(PyArray_DESCR(src))) {
        PyErr_Format(PyExc_TypeError, "%s must have a real numeric dtype, got %S",
                     name, (PyObject *)PyArray_DESCR(src));
        Py_DECREF(src);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(src) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions",
                     name, ndim, PyArray_NDIM(src));
        Py_DECREF(src);
        return NULL;
    }
    if (PyTypeNum_ISINTEGER(dtype) && PyTypeNum_ISFLOAT(PyArray_TYPE(src))) {
        PyErr_Format(PyExc_TypeError, "%s must have an integer dtype, got %S",
                     name, (PyObject *)PyArray_DESCR(src));
        Py_DECREF(src);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)src, PyArray_DescrFromType(dtype), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(src);
    if (!arr)
        return NULL;
    if (check_finite && dtype == NPY_FLOAT32) {
        const float *p = (const float *)PyArray_DATA(arr);
        npy_intp n = PyArray_SIZE(arr);
        for (npy_intp i = 0; i < n; i++) {
            if (!isfinite(p[i])) {
                PyErr_Format(PyExc_ValueError,
                             "%s contains NaN or infinity (first at flat index %zd); "
                             "expected finite values", name, (Py_ssize_t)i);
                Py_DECREF(arr);
                return NULL;
            }
        }
    }
    return arr;
}

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "qatfhe._core",
    "The qatfhe C core: networks, training, pruning and integer circuits.", -1, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (qfpy_register_net(m) < 0 || qfpy_register_circuit(m) < 0 || qfpy_register_prune(m) < 0 ||
        qfpy_register_gemm(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
