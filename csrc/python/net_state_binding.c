/* net_state_binding.c: the state methods of qatfhe._core.Net (net_binding.h):
 * tensor views (read-only while an epoch runs), masks, writes, snapshots,
 * initialisation, quantizer scales, shapes, random streams and the mode. */
#include "net_binding.h"

/* Make every live tensor view handed out read-only while epochs run (GIL held);
 * the last epoch to finish restores the views it cleared. */
int qfpy_net_freeze_views(NetObject *self)
{
    if (self->epochs_running++ > 0)
        return 0;
    PyObject *cleared = PyList_New(0);
    if (!cleared) { self->epochs_running--; return -1; }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->views); i++) {
        PyObject *arr = PyWeakref_GetObject(PyList_GET_ITEM(self->views, i));
        if (arr == Py_None || !PyArray_Check(arr) ||
            !PyArray_CHKFLAGS((PyArrayObject *)arr, NPY_ARRAY_WRITEABLE))
            continue;
        if (PyList_Append(cleared, arr) < 0) {
            Py_DECREF(cleared);
            self->epochs_running--;
            return -1;
        }
        PyArray_CLEARFLAGS((PyArrayObject *)arr, NPY_ARRAY_WRITEABLE);
    }
    self->frozen = cleared;
    return 0;
}

void qfpy_net_thaw_views(NetObject *self)
{
    if (--self->epochs_running > 0 || !self->frozen)
        return;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->frozen); i++)
        PyArray_ENABLEFLAGS((PyArrayObject *)PyList_GET_ITEM(self->frozen, i), NPY_ARRAY_WRITEABLE);
    Py_CLEAR(self->frozen);
}

/* ------------------------------------------------------------ tensors */

/* A float32 view of data shaped as t, keeping the net alive; remembered (weakly)
 * so that an epoch can make it read-only. */
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
    PyObject *ref = PyWeakref_NewRef(arr, NULL);
    if (!ref || PyList_Append(self->views, ref) < 0) {
        Py_XDECREF(ref);
        Py_DECREF(arr);
        return NULL;
    }
    Py_DECREF(ref);
    return arr;
}

/* The tensor registry (names, shapes, storage) is fixed when the net is built,
 * so listing it needs no lock. */
PyObject *Net_tensors(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    PyObject *live = PyList_New(0);   /* forget the views that are gone */
    if (!live) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->views); i++) {
        PyObject *ref = PyList_GET_ITEM(self->views, i);
        if (PyWeakref_GetObject(ref) != Py_None && PyList_Append(live, ref) < 0) {
            Py_DECREF(live);
            return NULL;
        }
    }
    Py_SETREF(self->views, live);
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

static PyObject *new_like(const qf_tensor *t, int dtype)
{
    npy_intp dims[4];
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    return PyArray_SimpleNew(t->ndim, dims, dtype);
}

PyObject *Net_get_mask(NetObject *self, PyObject *args)
{
    const char *name;
    if (!ready(self) || !PyArg_ParseTuple(args, "s", &name)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_tensor *t = qf_net_tensor(self->net, index);
    PyObject *arr = new_like(t, NPY_UINT8);   /* (ndarrays are not tracked by the GC) */
    if (!arr) return NULL;
    lock_read(self);
    int has = t->mask != NULL;
    if (has) memcpy(PyArray_DATA((PyArrayObject *)arr), t->mask, (size_t)t->size);
    unlock(self);
    if (!has) { Py_DECREF(arr); Py_RETURN_NONE; }
    return arr;
}

PyObject *Net_set_mask(NetObject *self, PyObject *args)
{
    const char *name;
    PyObject *mask_obj;
    if (!ready(self) || !PyArg_ParseTuple(args, "sO", &name, &mask_obj)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_tensor *t = qf_net_tensor(self->net, index);
    PyArrayObject *mask = NULL;
    if (mask_obj != Py_None) {
        mask = qfpy_array(mask_obj, "mask", NPY_UINT8, -1, 0);
        if (!mask) return NULL;
        if (PyArray_SIZE(mask) != t->size) {
            PyErr_Format(PyExc_ValueError, "mask for '%s' must have %lld entries, got %zd", name,
                         (long long)t->size, (Py_ssize_t)PyArray_SIZE(mask));
            Py_DECREF(mask);
            return NULL;
        }
    }
    lock_write(self);
    qf_status st = qf_net_set_mask(self->net, index, mask ? PyArray_DATA(mask) : NULL);
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    Py_XDECREF(mask);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

/* write_tensor(name, values): copy float32 values (the tensor's size) into its data,
 * waiting for a running epoch instead of tearing it. */
PyObject *Net_write_tensor(NetObject *self, PyObject *args)
{
    const char *name;
    PyObject *obj;
    if (!ready(self) || !PyArg_ParseTuple(args, "sO", &name, &obj)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    qf_tensor *t = qf_net_tensor(self->net, index);
    PyArrayObject *v = qfpy_array(obj, name, NPY_FLOAT32, -1, 1);
    if (!v) return NULL;
    if (PyArray_SIZE(v) != t->size) {
        PyErr_Format(PyExc_ValueError, "%s must have %lld values, got %zd", name,
                     (long long)t->size, (Py_ssize_t)PyArray_SIZE(v));
        Py_DECREF(v);
        return NULL;
    }
    lock_write(self);
    memcpy(t->data, PyArray_DATA(v), sizeof(float) * (size_t)t->size);
    unlock(self);
    Py_DECREF(v);
    Py_RETURN_NONE;
}

static PyObject *rng_tuple(qf_rng *r)
{
    return Py_BuildValue("(KKKK)", (unsigned long long)r->s[0], (unsigned long long)r->s[1],
                         (unsigned long long)r->s[2], (unsigned long long)r->s[3]);
}

/* snapshot() -> {"tensors": {name: {"kind", "data", "opt_m", "opt_v", "mask", "opt_step"}},
 * "rng": (init, shuffle), "optimizer_step", "training"}: copies of the whole state
 * taken at one moment (a running epoch is waited for), for save and state_dict. */
PyObject *Net_snapshot(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    int nt = qf_net_n_tensors(self->net);
    PyObject *arrays = PyList_New(0), *result = NULL, *tensors = NULL;
    char *has_mask = PyMem_Calloc((size_t)nt + 1, 1);
    long long *steps = PyMem_Calloc((size_t)nt + 1, sizeof *steps);
    if (!arrays || !has_mask || !steps) goto done;
    for (int i = 0; i < nt; i++) {   /* every array first: no allocation under the lock */
        const qf_tensor *t = qf_net_tensor(self->net, i);
        int copies = t->kind == QF_TENSOR_PARAM ? 3 : 1;
        for (int k = 0; k < copies; k++) {
            PyObject *a = new_like(t, NPY_FLOAT32);
            if (!a || PyList_Append(arrays, a) < 0) { Py_XDECREF(a); goto done; }
            Py_DECREF(a);
        }
        if (t->kind == QF_TENSOR_PARAM) {
            PyObject *a = new_like(t, NPY_UINT8);
            if (!a || PyList_Append(arrays, a) < 0) { Py_XDECREF(a); goto done; }
            Py_DECREF(a);
        }
    }
    qf_rng rng_init, rng_shuffle;
    long long step;
    int training;
    lock_read(self);
    Py_ssize_t j = 0;
    for (int i = 0; i < nt; i++) {
        const qf_tensor *t = qf_net_tensor(self->net, i);
        const float *src[3] = {t->data, t->opt_m, t->opt_v};
        int copies = t->kind == QF_TENSOR_PARAM ? 3 : 1;
        for (int k = 0; k < copies; k++)
            memcpy(PyArray_DATA((PyArrayObject *)PyList_GET_ITEM(arrays, j++)), src[k],
                   sizeof(float) * (size_t)t->size);
        steps[i] = (long long)t->opt_step;
        if (t->kind == QF_TENSOR_PARAM) {
            has_mask[i] = t->mask != NULL;
            if (t->mask)
                memcpy(PyArray_DATA((PyArrayObject *)PyList_GET_ITEM(arrays, j)), t->mask,
                       (size_t)t->size);
            j++;
        }
    }
    rng_init = *qf_net_init_rng(self->net);
    rng_shuffle = *qf_net_shuffle_rng(self->net);
    step = (long long)qf_net_optimizer(self->net)->step;
    training = qf_net_training(self->net);
    unlock(self);
    tensors = PyDict_New();
    if (!tensors) goto done;
    j = 0;
    for (int i = 0; i < nt; i++) {
        const qf_tensor *t = qf_net_tensor(self->net, i);
        int param = t->kind == QF_TENSOR_PARAM;
        PyObject *data = PyList_GET_ITEM(arrays, j++);
        PyObject *m = param ? PyList_GET_ITEM(arrays, j++) : Py_None;
        PyObject *v = param ? PyList_GET_ITEM(arrays, j++) : Py_None;
        PyObject *mask = param ? PyList_GET_ITEM(arrays, j++) : Py_None;
        if (!has_mask[i]) mask = Py_None;
        PyObject *item = Py_BuildValue("{s:s,s:O,s:O,s:O,s:O,s:L}", "kind",
                                       param ? "param" : "buffer", "data", data, "opt_m", m,
                                       "opt_v", v, "mask", mask, "opt_step", steps[i]);
        if (!item || PyDict_SetItemString(tensors, t->name, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    result = Py_BuildValue("{s:O,s:(NN),s:L,s:O}", "tensors", tensors, "rng",
                           rng_tuple(&rng_init), rng_tuple(&rng_shuffle), "optimizer_step", step,
                           "training", training ? Py_True : Py_False);
done:
    Py_XDECREF(arrays);
    Py_XDECREF(tensors);
    PyMem_Free(has_mask);
    PyMem_Free(steps);
    if (!result && !PyErr_Occurred()) PyErr_NoMemory();
    return result;
}

PyObject *Net_init_uniform(NetObject *self, PyObject *args)
{
    const char *name;
    double a, b;
    if (!ready(self) || !PyArg_ParseTuple(args, "sdd", &name, &a, &b)) return NULL;
    int index = find(self, name);
    if (index < 0) return NULL;
    lock_write(self);
    qf_status st = qf_net_init_uniform(self->net, index, (float)a, (float)b);
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_act_scale(NetObject *self, PyObject *args)
{
    int layer;
    float s;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    lock_read(self);
    qf_status st = qf_net_act_scale(self->net, layer, &s);
    unlock(self);
    if (st != QF_OK)
        return qfpy_raise(QF_ERR_ARG, "layer has no activation quantizer");
    return PyFloat_FromDouble(s);
}

/* The spec of a Linear/Conv2d layer with quantized weights (fixed at creation), or NULL
 * with ValueError set. */
static const qf_layer_spec *quantized_weight_layer(NetObject *self, int layer)
{
    const qf_layer_spec *spec = qf_net_layer_spec(self->net, layer);
    if (!spec || spec->weight_quant.kind == QF_QUANT_NONE ||
        (spec->kind != QF_LAYER_LINEAR && spec->kind != QF_LAYER_CONV2D)) {
        qfpy_raise(QF_ERR_ARG, "layer has no weight quantizer");
        return NULL;
    }
    return spec;
}

PyObject *Net_weight_scale(NetObject *self, PyObject *args)
{
    int layer;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    const qf_layer_spec *spec = quantized_weight_layer(self, layer);
    if (!spec) return NULL;
    npy_intp dims[1] = {spec->out_features};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out) return NULL;
    lock_read(self);
    qf_status st = qf_net_weight_scale(self->net, layer, PyArray_DATA(out));
    unlock(self);
    if (st != QF_OK) { Py_DECREF(out); return qfpy_raise(st, NULL); }
    return (PyObject *)out;
}

PyObject *Net_set_input_shape(NetObject *self, PyObject *args)
{
    PyObject *obj;
    int64_t s[3];
    if (!ready(self) || !PyArg_ParseTuple(args, "O", &obj) || qfpy_net_parse_shape(obj, s) < 0) return NULL;
    lock_read(self);
    int same = qfpy_net_same_shape(self->net, s);
    unlock(self);
    if (same) Py_RETURN_NONE;
    lock_write(self);
    qf_status st = qf_net_set_input_shape(self->net, s[0], s[1], s[2]);
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_layer_output_shape(NetObject *self, PyObject *args)
{
    int layer;
    int64_t s[3];
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    if (layer < 0 || layer >= qf_net_n_layers(self->net))
        return qfpy_raise(QF_ERR_ARG, "no such layer");
    lock_read(self);
    qf_net_layer_output_shape(self->net, layer, s);
    unlock(self);
    return qfpy_net_shape_tuple(s);
}

PyObject *Net_get_in_shape(NetObject *self, void *c)
{
    int64_t s[3];
    if (!ready(self)) return NULL;
    lock_read(self);
    qf_net_input_shape(self->net, s);
    unlock(self);
    return qfpy_net_shape_tuple(s);
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

PyObject *Net_rng_state(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    qf_rng a = *qf_net_init_rng(self->net), b = *qf_net_shuffle_rng(self->net);
    unlock(self);
    return Py_BuildValue("(NN)", rng_tuple(&a), rng_tuple(&b));
}

PyObject *Net_set_rng_state(NetObject *self, PyObject *args)
{
    PyObject *a, *b;
    if (!ready(self) || !PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &a, &PyTuple_Type, &b))
        return NULL;
    qf_rng ra, rb;
    if (rng_from(&ra, a) < 0 || rng_from(&rb, b) < 0) return NULL;
    lock_write(self);
    *qf_net_init_rng(self->net) = ra;
    *qf_net_shuffle_rng(self->net) = rb;
    unlock(self);
    Py_RETURN_NONE;
}

PyObject *Net_get_training(NetObject *self, void *closure)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    int t = qf_net_training(self->net);
    unlock(self);
    return PyBool_FromLong(t);
}

int Net_set_training(NetObject *self, PyObject *value, void *closure)
{
    if (!ready(self)) return -1;
    int t = PyObject_IsTrue(value);
    if (t < 0) return -1;
    lock_write(self);
    qf_net_set_training(self->net, t);
    unlock(self);
    return 0;
}

PyObject *Net_get_in_size(NetObject *self, void *c)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    long long size = (long long)qf_net_in_size(self->net);
    unlock(self);
    return PyLong_FromLongLong(size);
}

PyObject *Net_get_out_size(NetObject *self, void *c)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    long long size = (long long)qf_net_out_size(self->net);
    unlock(self);
    return PyLong_FromLongLong(size);
}

/* ------------------------------------------------------------ A2Q */

PyObject *Net_weight_codes(NetObject *self, PyObject *args)
{
    int layer;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    const qf_layer_spec *spec = quantized_weight_layer(self, layer);
    if (!spec) return NULL;
    char name[QF_NAME_LEN];
    snprintf(name, sizeof name, "%d.weight", layer);
    qf_tensor *w = qf_net_tensor(self->net, qf_net_find_tensor(self->net, name));
    if (!w) return qfpy_raise(QF_ERR_ARG, "layer has no weight");
    npy_intp cdims[4], sdims[1] = {spec->out_features};
    for (int d = 0; d < w->ndim; d++) cdims[d] = (npy_intp)w->shape[d];
    PyArrayObject *codes = (PyArrayObject *)PyArray_SimpleNew(w->ndim, cdims, NPY_FLOAT32);
    PyArrayObject *scale = (PyArrayObject *)PyArray_SimpleNew(1, sdims, NPY_FLOAT32);
    if (!codes || !scale) { Py_XDECREF(codes); Py_XDECREF(scale); return NULL; }
    lock_write(self);      /* brings packed weights up to date */
    qf_status st = qf_net_weight_codes(self->net, layer, PyArray_DATA(codes), PyArray_DATA(scale));
    unlock(self);
    if (st != QF_OK) { Py_DECREF(codes); Py_DECREF(scale); return qfpy_raise(st, NULL); }
    return Py_BuildValue("(NN)", codes, scale);
}

PyObject *Net_a2q_budget(NetObject *self, PyObject *args)
{
    int layer, bits, is_signed, active;
    double budget;
    if (!ready(self) || !PyArg_ParseTuple(args, "i", &layer)) return NULL;
    lock_read(self);
    active = qf_net_a2q_budget(self->net, layer, &budget, &bits, &is_signed);
    unlock(self);
    if (!active)
        Py_RETURN_NONE;
    return Py_BuildValue("(dii)", budget, bits, is_signed);
}

PyObject *Net_set_accumulator_bits(NetObject *self, PyObject *args)
{
    int layer, bits;
    double relax = 1.0;
    if (!ready(self) || !PyArg_ParseTuple(args, "ii|d", &layer, &bits, &relax)) return NULL;
    lock_write(self);
    qf_status st = qf_net_set_accumulator_bits(self->net, layer, bits, relax);
    unlock(self);
    if (st != QF_OK) return qfpy_raise(st, qf_net_error(self->net));
    Py_RETURN_NONE;
}
