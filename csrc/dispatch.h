/* dispatch.h: run-time choice of instruction set for the hot kernels.
 *
 * QF_MULTIVERSION compiles a function twice, for the baseline x86-64 (SSE2)
 * and for AVX2, and picks one when the library loads (GCC/Clang target_clones
 * on ELF platforms).  The default build flags stay portable.  Results are
 * identical on both paths: the kernels never reassociate float sums beyond
 * their fixed lane order and FMA contraction is off (-ffp-contract=off). */
#ifndef QF_DISPATCH_H
#define QF_DISPATCH_H

#if defined(__x86_64__) && defined(__ELF__) && !defined(__clang_analyzer__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(QF_NO_MULTIVERSION) &&        \
    ((defined(__GNUC__) && __GNUC__ >= 6) || (defined(__clang__) && __clang_major__ >= 14))
#define QF_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define QF_MULTIVERSION
#endif

#endif
