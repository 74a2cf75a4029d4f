/* net_infer.h: eval-mode inference on a shared network, from any number of
 * threads at once, in bounded memory.
 *
 * A qf_net_infer is a caller-owned workspace: a private copy of the net's
 * layer descriptions with their own weight-quantizer caches and activation
 * buffers.  qf_net_infer_forward only reads the net (parameters, statistics,
 * shapes), so several calls, each with its own workspace, may run on one net
 * while nothing modifies it (the caller's reader/writer lock keeps training,
 * shape changes and writes out).  It never touches the net's own batch
 * buffers, training flag or kept activations.
 *
 * Large batches run in chunks of at most QF_INFER_CHUNK_FLOATS activation
 * floats, so a workspace holds a bounded amount of memory whatever n is;
 * results do not depend on the chunking (every kernel's float order is fixed
 * per sample). */
#ifndef QF_NET_INFER_H
#define QF_NET_INFER_H

#include <stdint.h>
#include "net.h"

#ifndef QF_INFER_CHUNK_FLOATS
#define QF_INFER_CHUNK_FLOATS (1 << 20)   /* 4 MB of activations per chunk */
#endif

typedef struct qf_net_infer qf_net_infer;

/* An empty workspace (buffers are sized by the first forward); NULL if out of memory. */
qf_net_infer *qf_net_infer_create(void);
void qf_net_infer_free(qf_net_infer *ws);          /* accepts NULL */

/* Eval-mode forward of x (n, in_size) -> out (n, out_size) under the net's
 * current input shape, whatever the net's training flag.  QF_ERR_NONFINITE
 * for NaN/infinity in x, QF_ERR_NOMEM, QF_ERR_STATE when the input shape is
 * not set; the message is in qf_net_infer_error(ws). */
qf_status qf_net_infer_forward(qf_net_infer *ws, const qf_net *net, const float *x, int64_t n,
                               float *out);
const char *qf_net_infer_error(const qf_net_infer *ws);

/* Heap bytes the workspace holds (layer copies, weight caches, batch buffers). */
int64_t qf_net_infer_bytes(const qf_net_infer *ws);

#endif
