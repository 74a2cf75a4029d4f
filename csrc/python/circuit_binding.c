/* circuit_binding.c: qatfhe._core.Circuit, the Python face of qf_circuit
 * (csrc/circuit.h), and _core.bits_for_range (csrc/bitwidth.h).
 *
 *   Circuit(input_quant, stages)
 *     input_quant  (scale, zero_point, qmin, qmax)
 *     stages       list of dicts: name (str), weight (int32 (out, in) codes),
 *                  weight_scale (float), weight_zero_point (int, 0), bias
 *                  (float32 (out,) or None), lsbs_to_remove (int, 0), relu (bool),
 *                  output_quant ((scale, zero_point, qmin, qmax) or None)
 *   run(X) / run_codes(codes) -> (out float32 (n, out), out_int int64 (n, out),
 *                                  ranges int64 (n_nodes, 2))
 *     out_int: the integers the encrypted circuit returns (circuit.h)
 *   quantize_input(X) -> int64 codes (n, in)
 *   nodes() -> list of dicts {name, stage, kind, static_min, static_max, static_bits}
 * A circuit is immutable once built, so runs from several threads may overlap. */
#include "bindings.h"
#include "../circuit.h"

typedef struct {
    PyObject_HEAD
    qf_circuit *circuit;
} CircuitObject;

_Static_assert(sizeof(qf_range) == 2 * sizeof(int64_t), "ranges are returned as (n_nodes, 2) int64");

static const char *KIND_NAMES[] = {"input", "accumulator", "rounded", "lookup_output"};

/* ------------------------------------------------------------ spec parsing */

static int parse_quantizer(PyObject *obj, const char *what, qf_quantizer *q)
{
    double scale;
    long zp, qmin, qmax;
    if (!PyTuple_Check(obj) ||
        !PyArg_ParseTuple(obj, "dlll;quantizer must be (scale, zero_point, qmin, qmax)",
                          &scale, &zp, &qmin, &qmax)) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a tuple (scale, zero_point, qmin, qmax)",
                         what);
        }
        return -1;
    }
    long lim = QF_CIRCUIT_CODE_LIMIT;
    if (zp < -lim || zp > lim || qmin < -lim || qmin > lim || qmax < -lim || qmax > lim) {
        PyErr_Format(PyExc_ValueError, "%s: zero point, qmin and qmax must lie in [-%ld, %ld]",
                     what, lim, lim);
        return -1;
    }
    *q = (qf_quantizer){(float)scale, (int32_t)zp, (int32_t)qmin, (int32_t)qmax};
    return 0;
}

static int dict_long(PyObject *d, const char *key, long fallback, long *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || v == Py_None) { *out = fallback; return 0; }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "stage field %s must be an integer", key);
        return -1;
    }
    *out = x;
    return 0;
}

/* Fill spec from one stage dict; the arrays it points into are appended to
 * keep (they must outlive qf_circuit_create, which copies them). */
static int parse_stage(PyObject *d, int k, qf_stage_spec *spec, PyObject *keep)
{
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "stage %d must be a dict", k);
        return -1;
    }
    memset(spec, 0, sizeof *spec);
    PyObject *name = PyDict_GetItemString(d, "name");
    spec->name = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : "";
    if (!spec->name) return -1;

    PyObject *wobj = PyDict_GetItemString(d, "weight");
    if (!wobj) {
        PyErr_Format(PyExc_ValueError, "stage %d has no weight", k);
        return -1;
    }
    PyArrayObject *w = qfpy_array(wobj, "weight", NPY_INT32, 2, 0);
    if (!w) return -1;
    int rc = PyList_Append(keep, (PyObject *)w);
    Py_DECREF(w);
    if (rc < 0) return -1;
    if (PyArray_DIM(w, 0) > INT32_MAX || PyArray_DIM(w, 1) > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "stage %d: weight is too large", k);
        return -1;
    }
    spec->out_features = (int)PyArray_DIM(w, 0);
    spec->in_features = (int)PyArray_DIM(w, 1);
    spec->weight = PyArray_DATA(w);

    PyObject *bobj = PyDict_GetItemString(d, "bias");
    if (bobj && bobj != Py_None) {
        PyArrayObject *b = qfpy_array(bobj, "bias", NPY_FLOAT32, 1, 0);
        if (!b) return -1;
        rc = PyList_Append(keep, (PyObject *)b);
        Py_DECREF(b);
        if (rc < 0) return -1;
        if (PyArray_DIM(b, 0) != spec->out_features) {
            PyErr_Format(PyExc_ValueError, "stage %d: bias has %zd entries, expected %d", k,
                         (Py_ssize_t)PyArray_DIM(b, 0), spec->out_features);
            return -1;
        }
        spec->bias = PyArray_DATA(b);
    }
    PyObject *s = PyDict_GetItemString(d, "weight_scale");
    if (!s) {
        PyErr_Format(PyExc_ValueError, "stage %d has no weight_scale", k);
        return -1;
    }
    double ws = PyFloat_AsDouble(s);
    if (ws == -1.0 && PyErr_Occurred()) return -1;
    spec->weight_scale = (float)ws;

    long zw, lsbs, relu;
    if (dict_long(d, "weight_zero_point", 0, &zw) < 0 ||
        dict_long(d, "lsbs_to_remove", 0, &lsbs) < 0 || dict_long(d, "relu", 0, &relu) < 0)
        return -1;
    if (zw < INT32_MIN || zw > INT32_MAX || lsbs < 0 || lsbs > QF_CIRCUIT_MAX_LSBS) {
        PyErr_Format(PyExc_ValueError, "stage %d: weight_zero_point must fit int32 and "
                     "lsbs_to_remove lie in [0, %d]", k, QF_CIRCUIT_MAX_LSBS);
        return -1;
    }
    spec->weight_zero_point = (int32_t)zw;
    spec->lsbs_to_remove = (int)lsbs;
    spec->relu = relu != 0;
    PyObject *oq = PyDict_GetItemString(d, "output_quant");
    if (oq && oq != Py_None) {
        spec->has_output_quant = 1;
        if (parse_quantizer(oq, "output_quant", &spec->output_quant) < 0) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

static int Circuit_init(CircuitObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"input_quant", "stages", NULL};
    PyObject *iq, *stages;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!", kwlist, &iq, &PyList_Type, &stages))
        return -1;
    qf_quantizer input;
    if (parse_quantizer(iq, "input_quant", &input) < 0) return -1;
    Py_ssize_t n = PyList_GET_SIZE(stages);
    if (n < 1 || n > 4096) {
        PyErr_SetString(PyExc_ValueError, "stages must be a list of 1 to 4096 stage dicts");
        return -1;
    }
    qf_stage_spec *specs = PyMem_Calloc((size_t)n, sizeof *specs);
    PyObject *keep = PyList_New(0);
    int rc = -1;
    if (!specs || !keep) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        if (parse_stage(PyList_GET_ITEM(stages, k), (int)k, &specs[k], keep) < 0)
            goto done;
    char err[256] = "";
    qf_circuit *c = NULL;
    qf_status st = qf_circuit_create(&c, &input, specs, (int)n, err, sizeof err);
    if (st != QF_OK) {
        qfpy_raise(st, err);
        goto done;
    }
    qf_circuit_free(self->circuit);
    self->circuit = c;
    rc = 0;
done:
    PyMem_Free(specs);
    Py_XDECREF(keep);
    return rc;
}

static void Circuit_dealloc(CircuitObject *self)
{
    qf_circuit_free(self->circuit);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(CircuitObject *self)
{
    if (!self->circuit) {
        PyErr_SetString(PyExc_RuntimeError, "circuit is not initialised");
        return 0;
    }
    return 1;
}

/* A C-contiguous (n, in_features) array of dtype from obj, or NULL. */
static PyArrayObject *batch(CircuitObject *self, PyObject *obj, const char *name, int dtype)
{
    PyArrayObject *a = qfpy_array(obj, name, dtype, 2, 0);
    if (!a) return NULL;
    if (PyArray_DIM(a, 1) != qf_circuit_in_features(self->circuit)) {
        PyErr_Format(PyExc_ValueError, "%s must have %d features per sample, got %zd", name,
                     qf_circuit_in_features(self->circuit), (Py_ssize_t)PyArray_DIM(a, 1));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* ------------------------------------------------------------ compute */

static PyObject *run_common(CircuitObject *self, PyObject *arg, int from_codes)
{
    if (!ready(self)) return NULL;
    const qf_circuit *c = self->circuit;
    PyArrayObject *x = batch(self, arg, from_codes ? "codes" : "X",
                             from_codes ? NPY_INT64 : NPY_FLOAT32);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    npy_intp out_dims[2] = {n, qf_circuit_out_features(c)};
    npy_intp range_dims[2] = {qf_circuit_n_nodes(c), 2};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, out_dims, NPY_FLOAT32);
    PyArrayObject *out_int = (PyArrayObject *)PyArray_SimpleNew(2, out_dims, NPY_INT64);
    PyArrayObject *ranges = (PyArrayObject *)PyArray_SimpleNew(2, range_dims, NPY_INT64);
    int64_t *ws = PyMem_Malloc((size_t)qf_circuit_workspace_len(c) * sizeof *ws);
    PyObject *result = NULL;
    if (!out || !out_int || !ranges || !ws) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    qf_range *r = PyArray_DATA(ranges);   /* (min, max) pairs of int64 */
    qf_range_reset(r, qf_circuit_n_nodes(c));
    char err[256] = "";
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    if (from_codes)
        st = qf_circuit_run_codes(c, PyArray_DATA(out), PyArray_DATA(out_int), r, PyArray_DATA(x), n, ws, err, sizeof err);
    else
        st = qf_circuit_run(c, PyArray_DATA(out), PyArray_DATA(out_int), r, PyArray_DATA(x), n, ws, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) {
        qfpy_raise(st, err);
        goto done;
    }
    result = Py_BuildValue("OOO", out, out_int, ranges);
done:
    PyMem_Free(ws);
    Py_DECREF(x);
    Py_XDECREF(out);
    Py_XDECREF(out_int);
    Py_XDECREF(ranges);
    return result;
}

static PyObject *Circuit_run(CircuitObject *self, PyObject *arg)
{
    return run_common(self, arg, 0);
}

static PyObject *Circuit_run_codes(CircuitObject *self, PyObject *arg)
{
    return run_common(self, arg, 1);
}

static PyObject *Circuit_quantize_input(CircuitObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *x = batch(self, arg, "X", NPY_FLOAT32);
    if (!x) return NULL;
    PyArrayObject *codes = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_INT64);
    if (!codes) { Py_DECREF(x); return NULL; }
    char err[256] = "";
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qf_circuit_quantize_input(self->circuit, PyArray_DATA(codes), PyArray_DATA(x),
                                   PyArray_DIM(x, 0), err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    if (st != QF_OK) {
        Py_DECREF(codes);
        return qfpy_raise(st, err);
    }
    return (PyObject *)codes;
}

static PyObject *Circuit_nodes(CircuitObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    const qf_circuit *c = self->circuit;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int j = 0; j < qf_circuit_n_nodes(c); j++) {
        const qf_node_info *nd = qf_circuit_node(c, j);
        PyObject *d = Py_BuildValue(
            "{s:s,s:i,s:s,s:L,s:L,s:i}", "name", qf_circuit_stage_name(c, nd->stage),
            "stage", nd->stage, "kind", KIND_NAMES[nd->kind],
            "static_min", (long long)nd->static_min, "static_max", (long long)nd->static_max,
            "static_bits", qf_bits_for_range(nd->static_min, nd->static_max));
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(d);
    }
    return list;
}

static PyObject *Circuit_get_in(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLong(qf_circuit_in_features(self->circuit));
}

static PyObject *Circuit_get_out(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLong(qf_circuit_out_features(self->circuit));
}

static PyObject *Circuit_get_n_nodes(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLong(qf_circuit_n_nodes(self->circuit));
}

static PyObject *bits_for_range(PyObject *module, PyObject *args)
{
    long long lo, hi;
    if (!PyArg_ParseTuple(args, "LL", &lo, &hi)) return NULL;
    if (lo > hi) {
        PyErr_Format(PyExc_ValueError, "bits_for_range needs lo <= hi, got [%lld, %lld]", lo, hi);
        return NULL;
    }
    return PyLong_FromLong(qf_bits_for_range(lo, hi));
}

static PyMethodDef Circuit_methods[] = {
    {"run", (PyCFunction)Circuit_run, METH_O,
     "run(X) -> (out float32 (n, out), out_int int64 (n, out), ranges int64 (n_nodes, 2))"},
    {"run_codes", (PyCFunction)Circuit_run_codes, METH_O,
     "run_codes(codes) -> (out, out_int, ranges): run on integer input codes (n, in)"},
    {"quantize_input", (PyCFunction)Circuit_quantize_input, METH_O,
     "quantize_input(X) -> int64 codes (n, in)"},
    {"nodes", (PyCFunction)Circuit_nodes, METH_NOARGS,
     "nodes() -> list of {name, stage, kind, static_min, static_max, static_bits}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Circuit_getset[] = {
    {"in_features", (getter)Circuit_get_in, NULL, "input features", NULL},
    {"out_features", (getter)Circuit_get_out, NULL, "output features", NULL},
    {"n_nodes", (getter)Circuit_get_n_nodes, NULL, "number of integer value nodes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CircuitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qatfhe._core.Circuit",
    .tp_doc = "An exact integer circuit (csrc/circuit.h).",
    .tp_basicsize = sizeof(CircuitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Circuit_init,
    .tp_dealloc = (destructor)Circuit_dealloc,
    .tp_methods = Circuit_methods,
    .tp_getset = Circuit_getset,
};

static PyMethodDef circuit_functions[] = {
    {"bits_for_range", bits_for_range, METH_VARARGS,
     "bits_for_range(lo, hi) -> bits an FHE integer needs to hold [lo, hi]"},
    {NULL, NULL, 0, NULL},
};

int qfpy_register_circuit(PyObject *module)
{
    if (PyType_Ready(&CircuitType) < 0) return -1;
    Py_INCREF(&CircuitType);
    if (PyModule_AddObject(module, "Circuit", (PyObject *)&CircuitType) < 0) {
        Py_DECREF(&CircuitType);
        return -1;
    }
    return PyModule_AddFunctions(module, circuit_functions);
}
