/* prune.c: choosing pruning masks by weight magnitude (see prune.h).
 *
 * Each kept weight becomes a 64-bit key: the bit pattern of |w| in the high
 * 32 bits and its index in the low 32.  For finite non-negative floats the
 * bit patterns order like the values, so comparing keys as integers orders by
 * (|w|, index) with no two keys equal.  The `amount` smallest keys come off a
 * binary min-heap built in the scratch space: O(m + amount log m) for m kept
 * entries, in place, no allocation. */
#include "prune.h"

#include <math.h>
#include <string.h>

static uint64_t magnitude_key(float w, uint32_t index)
{
    float a = fabsf(w);
    uint32_t bits;
    memcpy(&bits, &a, sizeof bits);
    return ((uint64_t)bits << 32) | index;
}

/* Restore the min-heap property below position i of heap (n). */
static void sift_down(uint64_t *heap, int64_t n, int64_t i)
{
    for (;;) {
        int64_t smallest = i, left = 2 * i + 1, right = 2 * i + 2;
        if (left < n && heap[left] < heap[smallest]) smallest = left;
        if (right < n && heap[right] < heap[smallest]) smallest = right;
        if (smallest == i) return;
        uint64_t t = heap[i];
        heap[i] = heap[smallest];
        heap[smallest] = t;
        i = smallest;
    }
}

/* QF_OK if mask (n, or NULL) holds only 0s and 1s and w is finite wherever
 * the mask keeps it. */
static qf_status check_inputs(const float *w, const uint8_t *mask, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (mask && mask[i] > 1) return QF_ERR_ARG;
        if ((!mask || mask[i]) && !isfinite(w[i])) return QF_ERR_NONFINITE;
    }
    return QF_OK;
}

/* Copy mask_in (or all ones) to mask_out, then zero the `amount` smallest
 * keys among the kept entries.  Inputs already checked; amount <= kept. */
static void prune_smallest(uint8_t *mask_out, uint64_t *scratch, const float *w,
                           const uint8_t *mask_in, int64_t n, int64_t amount)
{
    if (n == 0) return;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (!mask_in || mask_in[i]) scratch[m++] = magnitude_key(w[i], (uint32_t)i);
    if (!mask_in) memset(mask_out, 1, (size_t)n);
    else if (mask_out != mask_in) memcpy(mask_out, mask_in, (size_t)n);
    if (amount == 0) return;
    for (int64_t i = m / 2 - 1; i >= 0; i--) sift_down(scratch, m, i);
    for (int64_t j = 0; j < amount; j++) {
        mask_out[(uint32_t)scratch[0]] = 0;   /* low 32 bits: the index */
        scratch[0] = scratch[--m];
        sift_down(scratch, m, 0);
    }
}

int64_t qf_prune_count_kept(const uint8_t *mask, int64_t n)
{
    if (!mask) return n;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) kept += mask[i] != 0;
    return kept;
}

qf_status qf_prune_l1_unstructured(uint8_t *mask_out, uint64_t *scratch, const float *w,
                                   const uint8_t *mask_in, int64_t n, int64_t amount)
{
    if (n < 0 || n > QF_PRUNE_MAX_ENTRIES) return QF_ERR_SHAPE;
    qf_status status = check_inputs(w, mask_in, n);
    if (status != QF_OK) return status;
    if (amount < 0 || amount > qf_prune_count_kept(mask_in, n)) return QF_ERR_ARG;
    prune_smallest(mask_out, scratch, w, mask_in, n, amount);
    return QF_OK;
}

qf_status qf_prune_fan_in(uint8_t *mask_out, uint64_t *scratch, const float *w,
                          const uint8_t *mask_in, int64_t rows, int64_t cols,
                          int64_t max_non_zero)
{
    if (rows < 0 || cols < 0 || cols > QF_PRUNE_MAX_ENTRIES) return QF_ERR_SHAPE;
    if (cols > 0 && rows > INT64_MAX / cols) return QF_ERR_SHAPE;
    if (max_non_zero < 1) return QF_ERR_ARG;
    qf_status status = check_inputs(w, mask_in, rows * cols);
    if (status != QF_OK) return status;
    for (int64_t r = 0; r < rows; r++) {
        const float *w_row = w + r * cols;                      /* (cols) */
        const uint8_t *in_row = mask_in ? mask_in + r * cols : NULL;
        uint8_t *out_row = mask_out + r * cols;
        int64_t kept = qf_prune_count_kept(in_row, cols);
        int64_t excess = kept > max_non_zero ? kept - max_non_zero : 0;
        prune_smallest(out_row, scratch, w_row, in_row, cols, excess);
    }
    return QF_OK;
}
