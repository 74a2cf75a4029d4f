/* net_binding.c: qatfhe._core.Net, the Python face of qf_net (csrc/net.h).
 * Every method converts and checks its buffers, releases the GIL around one
 * core call and maps the status through qfpy_raise. */
#include "bindings.h"
#include "../net.h"

typedef struct {
    PyObject_HEAD
    qf_net *net;
    int busy;               /* a call with the GIL released is running */
} NetObject;

/* ------------------------------------------------------------ spec parsing */

static int dict_int(PyObject *d, const char *key, int fallback, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { *out = fallback; return 0; }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < -2147483647L || x > 2147483647L) {
        PyErr_Format(PyExc_ValueError, "layer field %s is out of range", key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int dict_float(PyObject *d, const char *key, float fallback, float *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { *out = fallback; return 0; }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    *out = (float)x;
    return 0;
}

static int parse_quant(PyObject *layer, const char *key, qf_quant_spec *q)
{
    memset(q, 0, sizeof *q);
    PyObject *d = PyDict_GetItemString(layer, key);
    if (!d || d == Py_None) return 0;
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", key);
        return -1;
    }
    if (dict_int(d, "kind", 0, &q->kind) < 0 || dict_int(d, "bits", 8, &q->bits) < 0 ||
        dict_int(d, "signed", 1, &q->is_signed) < 0 || dict_int(d, "narrow", 0, &q->narrow) < 0 ||
        dict_float(d, "threshold", 1.0f, &q->threshold) < 0 ||
        dict_int(d, "stats_steps", 300, &q->stats_steps) < 0 ||
        dict_float(d, "momentum", 0.1f, &q->momentum) < 0 ||
        dict_float(d, "percentile", 99.999f, &q->percentile) < 0)
        return -1;
    return 0;
}

static int dict_pair(PyObject *d, const char *key, int fallback, int out[2])
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { out[0] = out[1] = fallback; return 0; }
    if (!PyArg_ParseTuple(v, "ii", &out[0], &out[1])) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "layer field %s must be a pair of integers", key);
        return -1;
    }
    return 0;
}

static int parse_layer(PyObject *layer, qf_layer_spec *s)
{
    memset(s, 0, sizeof *s);
    if (!PyDict_Check(layer)) {
        PyErr_SetString(PyExc_TypeError, "each layer spec must be a dict");
        return -1;
    }
    if (dict_int(layer, "kind", 0, &s->kind) < 0 ||
        dict_int(layer, "in_features", 0, &s->in_features) < 0 ||
        dict_int(layer, "out_features", 0, &s->out_features) < 0 ||
        dict_int(layer, "bias", 1, &s->has_bias) < 0 || dict_int(layer, "relu", 0, &s->relu) < 0 ||
        parse_quant(layer, "weight_quant", &s->weight_quant) < 0 ||
        parse_quant(layer, "act_quant", &s->act_quant) < 0 ||
        dict_int(layer, "per_channel", 0, &s->per_channel) < 0 ||
        dict_pair(layer, "kernel", 1, s->kernel) < 0 || dict_pair(layer, "stride", 1, s->stride) < 0 ||
        dict_pair(layer, "padding", 0, s->padding) < 0 || dict_pair(layer, "dims", 1, s->dims) < 0 ||
        dict_int(layer, "begin", -1, &s->begin) < 0 ||
        dict_int(layer, "groups", 1, &s->groups) < 0)
        return -1;
    PyObject *shape = PyDict_GetItemString(layer, "shape");
    if (shape && !PyArg_ParseTuple(shape, "iii", &s->shape[0], &s->shape[1], &s->shape[2])) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "layer field shape must be three integers");
        return -1;
    }
    return 0;
}

/* (C, H, W) from an int (features) or a 1- to 3-tuple; missing H, W are 1. */
static int parse_shape(PyObject *obj, int64_t shape[3])
{
    shape[0] = 0; shape[1] = 1; shape[2] = 1;
    if (PyLong_Check(obj)) {
        shape[0] = PyLong_AsLongLong(obj);
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) < 1 || PyTuple_GET_SIZE(obj) > 3) {
        PyErr_SetString(PyExc_TypeError, "in_shape must be an int or a tuple of 1 to 3 ints");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
        shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, i));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *shape_tuple(const int64_t s[3])
{
    return Py_BuildValue("(LLL)", (long long)s[0], (long long)s[1], (long long)s[2]);
}

/* ------------------------------------------------------------ lifecycle */

static int Net_init(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"layers", "in_shape", "seed", NULL};
    PyObject *layers, *shape_obj;
    unsigned long long seed;
    int64_t in_shape[3];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OK", kwlist, &PyList_Type, &layers,
                                     &shape_obj, &seed))
        return -1;
    if (parse_shape(shape_obj, in_shape) < 0)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(layers);
    qf_layer_spec *specs = PyMem_Calloc((size_t)(n ? n : 1), sizeof *specs);
    if (!specs) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_layer(PyList_GET_ITEM(layers, i), &specs[i]) < 0) {
            PyMem_Free(specs);
            return -1;
        }
    }
    char err[256] = "";
    qf_net_free(self->net);
    self->net = NULL;
    qf_status st = qf_net_create_shaped(&self->net, specs, (int)n, in_shape, seed, err, sizeof err);
    PyMem_Free(specs);
    if (st != QF_OK) {
        qfpy_raise(st, err);
        return -1;
    }
    return 0;
}

static void Net_dealloc(NetObject *self)
{
    qf_net_free(self->net);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(NetObject *self)
{
    if (!self->net) {
        PyErr_SetString(PyExc_RuntimeError, "network is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "network is in use by another thread");
        return 0;
    }
    return 1;
}

static PyObject *raise_net(NetObject *self, qf_status st)
{
    return qfpy_raise(st, qf_net_error(self->net));
}

/* ------------------------------------------------------------ compute */

/* Convert X ((n, F) or (n, C, H, W)) and set the net's input shape from it. */
static PyArrayObject *input_array(NetObject *self, PyObject *arg)
{
    PyArrayObject *x = qfpy_array(arg, "X", NPY_FLOAT32, -1, 0);
    if (!x) return NULL;
    int nd = PyArray_NDIM(x);
    if (nd != 2 && nd != 4) {
        PyErr_Format(PyExc_ValueError, "X must be 2-dimensional (n, features) or 4-dimensional "
                     "(n, channels, height, width), got %d dimensions", nd);
        Py_DECREF(x);
        return NULL;
    }
    int64_t c = PyArray_DIM(x, 1), h = nd == 4 ? PyArray_DIM(x, 2) : 1,
            w = nd == 4 ? PyArray_DIM(x, 3) : 1;
    if (PyArray_DIM(x, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "X is empty; expected at least one sample");
        Py_DECREF(x);
        return NULL;
    }
    qf_status st = qf_net_set_input_shape(self->net, c, h, w);
    if (st != QF_OK) {
        Py_DECREF(x);
        raise_net(self, st);
        return NULL;
    }
    return x;
}

/* A new (n, out) or (n, C, H, W) float32 array for the net's output. */
static PyArrayObject *output_array(NetObject *self, npy_intp n)
{
    int64_t s[3];
    qf_net_output_shape(self->net, s);
    if (s[1] == 1 && s[2] == 1) {
        npy_intp dims[2] = {n, (npy_intp)s[0]};
        return (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    }
    npy_intp dims[4] = {n, (npy_intp)s[0], (npy_intp)s[1], (npy_intp)s[2]};
    return (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
}

static PyObject *Net_forward(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *x = input_array(self, arg);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    PyArrayObject *out = output_array(self, n);
    if (!out) { Py_DECREF(x); return NULL; }
    qf_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_forward(self->net, PyArray_DATA(x), n, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(x);
    if (st != QF_OK) { Py_DECREF(out); return raise_net(self, st); }
    return (PyObject *)out;
}

static PyObject *Net_backward_ce(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *y = qfpy_array(arg, "y", NPY_INT32, 1, 0);
    if (!y) return NULL;
    double loss = 0.0;
    int64_t correct = 0;
    qf_status st = QF_OK;
    /* the label count must match the last forward; the core checks the values */
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_backward_ce(self->net, PyArray_DATA(y), PyArray_DIM(y, 0), &loss, &correct);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(y);
    if (st != QF_OK) return raise_net(self, st);
    return Py_BuildValue("dL", loss, (long long)correct);
}

static PyObject *Net_backward(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *d = qfpy_array(arg, "grad_output", NPY_FLOAT32, -1, 1);
    if (!d) return NULL;
    if (PyArray_NDIM(d) < 1 || PyArray_SIZE(d) != PyArray_DIM(d, 0) * qf_net_out_size(self->net)) {
        PyErr_Format(PyExc_ValueError, "grad_output must hold %lld values per sample",
                     (long long)qf_net_out_size(self->net));
        Py_DECREF(d);
        return NULL;
    }
    qf_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_backward(self->net, PyArray_DATA(d), PyArray_DIM(d, 0));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(d);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_zero_grad(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    qf_net_zero_grad(self->net);
    Py_RETURN_NONE;
}

static PyObject *Net_step(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    qf_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_step(self->net);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_set_optimizer(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "lr", "beta1", "beta2", "eps", "weight_decay", "momentum",
                             "dampening", "nesterov", NULL};
    const char *kind;
    double lr, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.0, mom = 0.0, damp = 0.0;
    int nesterov = 0;
    if (!ready(self)) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sd|ddddddp", kwlist, &kind, &lr, &b1, &b2,
                                     &eps, &wd, &mom, &damp, &nesterov))
        return NULL;
    qf_optimizer o = {0};
    if (strcmp(kind, "adamw") == 0) o.kind = QF_OPT_ADAMW;
    else if (strcmp(kind, "sgd") == 0) o.kind = QF_OPT_SGD;
    o.lr = (float)lr; o.beta1 = (float)b1; o.beta2 = (float)b2; o.eps = (float)eps;
    o.weight_decay = (float)wd; o.momentum = (float)mom; o.dampening = (float)damp;
    o.nesterov = nesterov;
    qf_status st = qf_net_set_optimizer(self->net, &o);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_get_step(NetObject *self, void *closure)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLongLong((long long)qf_net_optimizer(self->net)->step);
}

static int Net_set_step(NetObject *self, PyObject *value, void *closure)
{
    if (!ready(self)) return -1;
    long long step = PyLong_AsLongLong(value);
    if (step == -1 && PyErr_Occurred()) return -1;
    if (step < 0) { PyErr_SetString(PyExc_ValueError, "step must be >= 0"); return -1; }
    qf_net_set_optimizer_step(self->net, step);
    return 0;
}

static PyObject *Net_set_lr(NetObject *self, PyObject *args)
{
    double lr;
    if (!ready(self) || !PyArg_ParseTuple(args, "d", &lr)) return NULL;
    qf_status st = qf_net_set_learning_rate(self->net, (float)lr);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_train_epoch(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"X", "y", "batch_size", "seed", NULL};
    PyObject *xo, *yo, *seed_obj = Py_None;
    long long batch;
    if (!ready(self)) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOL|O", kwlist, &xo, &yo, &batch, &seed_obj))
        return NULL;
    qf_rng own;
    qf_rng *rng = qf_net_shuffle_rng(self->net);
    if (seed_obj != Py_None) {
        unsigned long long seed = PyLong_AsUnsignedLongLongMask(seed_obj);
        if (PyErr_Occurred()) return NULL;
        qf_rng_seed(&own, seed, 2);
        rng = &own;
    }
    PyArrayObject *x = input_array(self, xo);
    if (!x) return NULL;
    PyArrayObject *y = qfpy_array(yo, "y", NPY_INT32, 1, 0);
    if (!y) { Py_DECREF(x); return NULL; }
    npy_intp n = PyArray_DIM(x, 0);
    if (PyArray_DIM(y, 0) != n) {
        PyErr_Format(PyExc_ValueError, "y has %zd labels but X has %zd samples",
                     (Py_ssize_t)PyArray_DIM(y, 0), (Py_ssize_t)n);
        Py_DECREF(x); Py_DECREF(y);
        return NULL;
    }
    double loss_sum = 0.0;
    int64_t correct = 0;
    qf_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_train_epoch(self->net, PyArray_DATA(x), PyArray_DATA(y), n, batch, rng,
                            &loss_sum, &correct);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(x); Py_DECREF(y);
    if (st != QF_OK) return raise_net(self, st);
    return Py_BuildValue("dL", loss_sum, (long long)correct);
}

/* ------------------------------------------------------------ tensors */

static PyObject *view(NetObject *self, float *data, const qf_tensor *t)
{
    npy_intp dims[4];
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    PyObject *arr = PyArray_SimpleNewFromData(t->ndim, dims, NPY_FLOAT32, data);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Net_tensors(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int i = 0; i < qf_net_n_tensors(self->net); i++) {
        qf_tensor *t = qf_net_tensor(self->net, i);
        int param = t->kind == QF_TENSOR_PARAM;
        PyObject *data = view(self, t->data, t);
        PyObject *grad = param ? view(self, t->grad, t) : (Py_INCREF(Py_None), Py_None);
        PyObject *m = param ? view(self, t->opt_m, t) : (Py_INCREF(Py_None), Py_None);
        PyObject *v = param ? view(self, t->opt_v, t) : (Py_INCREF(Py_None), Py_None);
        PyObject *item = (data && grad && m && v)
            ? Py_BuildValue("{s:s,s:s,s:i,s:N,s:N,s:N,s:N}", "name", t->name, "kind",
                            param ? "param" : "buffer", "layer", t->layer, "data", data,
                            "grad", grad, "opt_m", m, "opt_v", v)
            : NULL;
        if (!item || PyList_Append(list, item) < 0) {
            if (!item) { Py_XDECREF(data); Py_XDECREF(grad); Py_XDECREF(m); Py_XDECREF(v); }
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static int find(NetObject *self, const char *name)
{
    int index = qf_net_find_tensor(self->net, name);
    if (index < 0)
        PyErr_Format(PyExc_ValueError, "the network has no tensor named '%s'", name);
    return index;
}

static PyObject *Net_get_mask(NetObject *self, PyObject *args)
{
    const char *name;
    if (!ready(self) || !PyArg_ParseTuple(args, "s", &name)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_tensor *t = qf_net_tensor(self->net, index);
    if (!t->mask) Py_RETURN_NONE;
    npy_intp dims[4];
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    PyObject *arr = PyArray_SimpleNew(t->ndim, dims, NPY_UINT8);
    if (!arr) return NULL;
    memcpy(PyArray_DATA((PyArrayObject *)arr), t->mask, (size_t)t->size);
    return arr;
}

static PyObject *Net_set_mask(NetObject *self, PyObject *args)
{
    const char *name;
    PyObject *mask_obj;
    if (!ready(self) || !PyArg_ParseTuple(args, "sO", &name, &mask_obj)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_tensor *t = qf_net_tensor(self->net, index);
    if (mask_obj == Py_None) {
        qf_status st = qf_net_set_mask(self->net, index, NULL);
        if (st != QF_OK) return raise_net(self, st);
        Py_RETURN_NONE;
    }
    PyArrayObject *mask = qfpy_array(mask_obj, "mask", NPY_UINT8, -1, 0);
    if (!mask) return NULL;
    if (PyArray_SIZE(mask) != t->size) {
        PyErr_Format(PyExc_ValueError, "mask for '%s' must have %lld entries, got %zd", name,
                     (long long)t->size, (Py_ssize_t)PyArray_SIZE(mask));
        Py_DECREF(mask);
        return NULL;
    }
    qf_status st = qf_net_set_mask(self->net, index, PyArray_DATA(mask));
    Py_DECREF(mask);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_init_uniform(NetObject *self, PyObject *args)
{
    const char *name;
    double a, b;
    if (!ready(self) || !PyArg_ParseTuple(args, "sdd", &name, &a, &b)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_status st = qf_net_init_uniform(self->net, index, (float)a, (float)b);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_act_scale(NetObject *self, PyObject *args)
{
    int layer;
    float s;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    if (qf_net_act_scale(self->net, layer, &s) != QF_OK)
        return qfpy_raise(QF_ERR_ARG, "layer has no activation quantizer");
    return PyFloat_FromDouble(s);
}

static PyObject *Net_weight_scale(NetObject *self, PyObject *args)
{
    int layer;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    const qf_layer_spec *spec = qf_net_layer_spec(self->net, layer);
    if (!spec || spec->weight_quant.kind == QF_QUANT_NONE ||
        (spec->kind != QF_LAYER_LINEAR && spec->kind != QF_LAYER_CONV2D))
        return qfpy_raise(QF_ERR_ARG, "layer has no weight quantizer");
    npy_intp dims[1] = {spec->out_features};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out) return NULL;
    qf_status st = qf_net_weight_scale(self->net, layer, PyArray_DATA(out));
    if (st != QF_OK) { Py_DECREF(out); return qfpy_raise(st, NULL); }
    return (PyObject *)out;
}

static PyObject *Net_set_input_shape(NetObject *self, PyObject *args)
{
    PyObject *obj;
    int64_t s[3];
    if (!ready(self) || !PyArg_ParseTuple(args, "O", &obj) || parse_shape(obj, s) < 0) return NULL;
    qf_status st = qf_net_set_input_shape(self->net, s[0], s[1], s[2]);
    if (st != QF_OK) return raise_net(self, st);
    Py_RETURN_NONE;
}

static PyObject *Net_layer_output_shape(NetObject *self, PyObject *args)
{
    int layer;
    int64_t s[3];
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    if (layer < 0 || layer >= qf_net_n_layers(self->net))
        return qfpy_raise(QF_ERR_ARG, "no such layer");
    qf_net_layer_output_shape(self->net, layer, s);
    return shape_tuple(s);
}

static PyObject *Net_get_in_shape(NetObject *self, void *c)
{
    int64_t s[3];
    if (!ready(self)) return NULL;
    qf_net_input_shape(self->net, s);
    return shape_tuple(s);
}

static PyObject *rng_tuple(qf_rng *r)
{
    return Py_BuildValue("(KKKK)", (unsigned long long)r->s[0], (unsigned long long)r->s[1],
                         (unsigned long long)r->s[2], (unsigned long long)r->s[3]);
}

static int rng_from(qf_rng *r, PyObject *t)
{
    unsigned long long s[4];
    if (!PyArg_ParseTuple(t, "KKKK", &s[0], &s[1], &s[2], &s[3])) return -1;
    if (!(s[0] | s[1] | s[2] | s[3])) {
        PyErr_SetString(PyExc_ValueError, "random state must not be all zeros");
        return -1;
    }
    for (int i = 0; i < 4; i++) r->s[i] = s[i];
    return 0;
}

static PyObject *Net_rng_state(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    return Py_BuildValue("(NN)", rng_tuple(qf_net_init_rng(self->net)),
                         rng_tuple(qf_net_shuffle_rng(self->net)));
}

static PyObject *Net_set_rng_state(NetObject *self, PyObject *args)
{
    PyObject *a, *b;
    if (!ready(self) || !PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &a, &PyTuple_Type, &b))
        return NULL;
    qf_rng ra, rb;
    if (rng_from(&ra, a) < 0 || rng_from(&rb, b) < 0) return NULL;
    *qf_net_init_rng(self->net) = ra;
    *qf_net_shuffle_rng(self->net) = rb;
    Py_RETURN_NONE;
}

static PyObject *Net_get_training(NetObject *self, void *closure)
{
    if (!ready(self)) return NULL;
    return PyBool_FromLong(qf_net_training(self->net));
}

static int Net_set_training(NetObject *self, PyObject *value, void *closure)
{
    if (!ready(self)) return -1;
    int t = PyObject_IsTrue(value);
    if (t < 0) return -1;
    qf_net_set_training(self->net, t);
    return 0;
}

static PyObject *Net_get_in_size(NetObject *self, void *c)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLongLong((long long)qf_net_in_size(self->net));
}

static PyObject *Net_get_out_size(NetObject *self, void *c)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLongLong((long long)qf_net_out_size(self->net));
}

static PyMethodDef Net_methods[] = {
    {"forward", (PyCFunction)Net_forward, METH_O, "forward(X) -> outputs (n, out_size)"},
    {"backward_ce", (PyCFunction)Net_backward_ce, METH_O,
     "backward_ce(y) -> (mean loss, n_correct): cross-entropy of the last training forward"},
    {"backward", (PyCFunction)Net_backward, METH_O, "backward(grad_output)"},
    {"zero_grad", (PyCFunction)Net_zero_grad, METH_NOARGS, "zero every gradient"},
    {"step", (PyCFunction)Net_step, METH_NOARGS, "one optimizer step"},
    {"set_optimizer", (PyCFunction)Net_set_optimizer, METH_VARARGS | METH_KEYWORDS,
     "set_optimizer(kind, lr, beta1, beta2, eps, weight_decay, momentum, dampening, nesterov)"},
    {"set_lr", (PyCFunction)Net_set_lr, METH_VARARGS, "set_lr(lr): keep the optimizer state"},
    {"train_epoch", (PyCFunction)Net_train_epoch, METH_VARARGS | METH_KEYWORDS,
     "train_epoch(X, y, batch_size, seed=None) -> (loss sum, n_correct)"},
    {"tensors", (PyCFunction)Net_tensors, METH_NOARGS, "list of tensor dicts with NumPy views"},
    {"get_mask", (PyCFunction)Net_get_mask, METH_VARARGS, "get_mask(name) -> uint8 copy or None"},
    {"set_mask", (PyCFunction)Net_set_mask, METH_VARARGS, "set_mask(name, mask or None)"},
    {"init_uniform", (PyCFunction)Net_init_uniform, METH_VARARGS, "init_uniform(name, a, b)"},
    {"act_scale", (PyCFunction)Net_act_scale, METH_VARARGS, "act_scale(layer) -> eval scale"},
    {"weight_scale", (PyCFunction)Net_weight_scale, METH_VARARGS,
     "weight_scale(layer) -> float32 (out_channels,) scales of the current weights"},
    {"set_input_shape", (PyCFunction)Net_set_input_shape, METH_VARARGS,
     "set_input_shape((C, H, W)): check every layer against this sample shape"},
    {"layer_output_shape", (PyCFunction)Net_layer_output_shape, METH_VARARGS,
     "layer_output_shape(i) -> (C, H, W) under the current input shape"},
    {"rng_state", (PyCFunction)Net_rng_state, METH_NOARGS, "(init stream, shuffle stream)"},
    {"set_rng_state", (PyCFunction)Net_set_rng_state, METH_VARARGS, "restore rng_state()"},
    {NULL}
};

static PyGetSetDef Net_getset[] = {
    {"training", (getter)Net_get_training, (setter)Net_set_training, "training mode", NULL},
    {"optimizer_step", (getter)Net_get_step, (setter)Net_set_step, "optimizer steps taken", NULL},
    {"in_size", (getter)Net_get_in_size, NULL, "features per input sample", NULL},
    {"in_shape", (getter)Net_get_in_shape, NULL, "current (C, H, W) of input samples", NULL},
    {"out_size", (getter)Net_get_out_size, NULL, "outputs per sample", NULL},
    {NULL}
};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qatfhe._core.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Net(layers, in_size, seed): a C network (see qatfhe.nn.Sequential)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Net_init,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_methods = Net_methods,
    .tp_getset = Net_getset,
};

int qfpy_register_net(PyObject *module)
{
    if (PyType_Ready(&NetType) < 0) return -1;
    Py_INCREF(&NetType);
    if (PyModule_AddObject(module, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        return -1;
    }
    PyModule_AddIntConstant(module, "LAYER_LINEAR", QF_LAYER_LINEAR);
    PyModule_AddIntConstant(module, "LAYER_RELU", QF_LAYER_RELU);
    PyModule_AddIntConstant(module, "LAYER_ACT_QUANT", QF_LAYER_ACT_QUANT);
    PyModule_AddIntConstant(module, "LAYER_CONV2D", QF_LAYER_CONV2D);
    PyModule_AddIntConstant(module, "LAYER_AVGPOOL2D", QF_LAYER_AVGPOOL2D);
    PyModule_AddIntConstant(module, "LAYER_RESHAPE", QF_LAYER_RESHAPE);
    PyModule_AddIntConstant(module, "LAYER_TRANSPOSE", QF_LAYER_TRANSPOSE);
    PyModule_AddIntConstant(module, "LAYER_RESIDUAL_ADD", QF_LAYER_RESIDUAL_ADD);
    PyModule_AddIntConstant(module, "QUANT_NONE", QF_QUANT_NONE);
    PyModule_AddIntConstant(module, "QUANT_CONST", QF_QUANT_CONST);
    PyModule_AddIntConstant(module, "QUANT_ABSMAX", QF_QUANT_ABSMAX);
    PyModule_AddIntConstant(module, "QUANT_LEARNED", QF_QUANT_LEARNED);
    return 0;
}
