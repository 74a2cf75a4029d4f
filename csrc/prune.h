/* prune.h: choosing pruning masks by weight magnitude (REFERENCE.md section 4).
 *
 * A mask holds one uint8 per weight: 1 = kept, 0 = pruned.  These kernels
 * only choose masks; qf_net_set_mask installs them in a net, which then holds
 * the pruned weights at exactly 0.
 *
 * Both kernels prune among the entries the current mask keeps, so pruning an
 * already pruned tensor combines the masks as torch.nn.utils.prune does.
 * Weights are ranked by the key (|w|, flat index): the smaller |w| is pruned
 * first and, of equal |w| (0.0 and -0.0 are equal), the one at the lower flat
 * index is pruned first.  The choice is therefore deterministic; PyTorch's
 * topk leaves the order of ties unspecified, and without ties both choose the
 * same entries.
 *
 * The kernels never allocate: the caller passes scratch space of one uint64
 * per ranked entry.  On any error the output mask is left unchanged. */
#ifndef QF_PRUNE_H
#define QF_PRUNE_H

#include <stdint.h>
#include "status.h"

/* Largest tensor (l1_unstructured) or row (fan_in) the kernels rank: the
 * index part of a key is 32 bits wide. */
#define QF_PRUNE_MAX_ENTRIES ((int64_t)UINT32_MAX)

/* Number of entries mask (n) keeps; n when mask is NULL. */
int64_t qf_prune_count_kept(const uint8_t *mask, int64_t n);

/* L1 unstructured pruning: mask the `amount` smallest |w| among the entries
 * mask_in keeps, whatever the tensor's shape.
 *   mask_out  (n) result, 0/1; may be the same array as mask_in
 *   scratch   (n) work space, contents ignored
 *   w         (n) weights; every kept entry must be finite
 *   mask_in   (n) current mask of 0s and 1s, or NULL: all kept
 * Status: QF_OK;
 *   QF_ERR_SHAPE      n < 0 or n > QF_PRUNE_MAX_ENTRIES;
 *   QF_ERR_ARG        amount < 0 or amount > the number of kept entries,
 *                     or mask_in holds a value other than 0 and 1;
 *   QF_ERR_NONFINITE  a kept weight is NaN or infinite. */
qf_status qf_prune_l1_unstructured(uint8_t *mask_out, uint64_t *scratch, const float *w,
                                   const uint8_t *mask_in, int64_t n, int64_t amount);

/* Fan-in pruning: in every row (one output neuron or channel) keep the
 * max_non_zero largest |w| among the entries mask_in keeps and mask the
 * rest; rows that keep max_non_zero or fewer are unchanged.  Afterwards no
 * row keeps more than max_non_zero entries, which bounds the number of terms
 * of every accumulator.
 *   mask_out  (rows, cols) result, 0/1; may be the same array as mask_in
 *   scratch   (cols) work space, contents ignored
 *   w         (rows, cols) weights (a conv weight as (out_ch, in_ch*kh*kw));
 *             every kept entry must be finite
 *   mask_in   (rows, cols) current mask of 0s and 1s, or NULL: all kept
 * Status: QF_OK;
 *   QF_ERR_SHAPE      rows < 0, cols < 0 or cols > QF_PRUNE_MAX_ENTRIES;
 *   QF_ERR_ARG        max_non_zero < 1, or mask_in holds a value other than 0 and 1;
 *   QF_ERR_NONFINITE  a kept weight is NaN or infinite. */
qf_status qf_prune_fan_in(uint8_t *mask_out, uint64_t *scratch, const float *w,
                          const uint8_t *mask_in, int64_t rows, int64_t cols,
                          int64_t max_non_zero);

#endif
