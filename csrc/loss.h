/* loss.h: softmax cross-entropy, mean over the batch (torch.nn.CrossEntropyLoss). */
#ifndef QF_LOSS_H
#define QF_LOSS_H

#include <stdint.h>
#include "status.h"

/* logits (n, k), labels (n) in [0, k).  dlogits (n, k) = (softmax - onehot) / n
 * (may be NULL).  *loss = mean of -log softmax[label] (float64 accumulation),
 * *n_correct = count of argmax (first max) == label.  QF_ERR_LABEL on a bad
 * label (nothing written to dlogits past it). */
qf_status qf_softmax_ce(double *loss, int64_t *n_correct, float *dlogits,
                        const float *logits, const int32_t *labels, int64_t n, int64_t k);

/* classes (n) = argmax over k of logits (n, k), first max on ties. */
void qf_argmax_rows(int64_t *classes, const float *logits, int64_t n, int64_t k);

#endif
