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
#define QF_HAVE_MULTIVERSION 1
#else
#define QF_MULTIVERSION
#endif

/* QF_WIDE_VECTORS(): whether the running code has 8-float vector registers
 * (the AVX2 clone, an AVX2 build, or a non-x86 target with many vector
 * registers), so that kernels can size their register blocks.  Block sizes
 * never change what is summed in which order, only how fast. */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX2__)
#define QF_WIDE_VECTORS() 1
#elif defined(QF_HAVE_MULTIVERSION)
#define QF_WIDE_VECTORS() (__builtin_cpu_supports("avx2") != 0)
#else
#define QF_WIDE_VECTORS() 0
#endif
#else
#define QF_WIDE_VECTORS() 1
#endif

#endif
