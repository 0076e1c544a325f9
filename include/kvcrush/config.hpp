// User-facing compile-time knobs. Define them before including any kvcrush
// header (or on the compiler command line):
//
//   KVCRUSH_MAX_ISA=scalar|avx2|avx512
//       Caps the instruction set the kernels may use, below what the compiler
//       flags allow. Useful to build a portable binary with -march=native-like
//       flags elsewhere, or to compare kernels.
//   KVCRUSH_ENABLE_BOUNDS_CHECKS=0|1
//       Bounds-checked element access in tensor views. Defaults to 1 when
//       NDEBUG is not defined (debug builds), 0 otherwise.
#pragma once

// Levels are 1-based so that an unknown name (which the preprocessor turns
// into 0) can be told apart from a valid one.
#define KVCRUSH_ISA_LEVEL_scalar 1
#define KVCRUSH_ISA_LEVEL_avx2 2
#define KVCRUSH_ISA_LEVEL_avx512 3

#define KVCRUSH_PP_CAT_(a, b) a##b
#define KVCRUSH_PP_CAT(a, b) KVCRUSH_PP_CAT_(a, b)

#if defined(KVCRUSH_MAX_ISA)
#define KVCRUSH_MAX_ISA_LEVEL KVCRUSH_PP_CAT(KVCRUSH_ISA_LEVEL_, KVCRUSH_MAX_ISA)
#if KVCRUSH_MAX_ISA_LEVEL == 0
#error "KVCRUSH_MAX_ISA must be one of: scalar, avx2, avx512"
#endif
#else
#define KVCRUSH_MAX_ISA_LEVEL KVCRUSH_ISA_LEVEL_avx512
#endif

// What the compiler flags of this translation unit allow.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VPOPCNTDQ__) && defined(__AVX2__) && \
    defined(__FMA__) && defined(__BMI2__) && defined(__POPCNT__)
#define KVCRUSH_COMPILER_ISA_LEVEL KVCRUSH_ISA_LEVEL_avx512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__) && defined(__POPCNT__)
#define KVCRUSH_COMPILER_ISA_LEVEL KVCRUSH_ISA_LEVEL_avx2
#else
#define KVCRUSH_COMPILER_ISA_LEVEL KVCRUSH_ISA_LEVEL_scalar
#endif

#if KVCRUSH_COMPILER_ISA_LEVEL < KVCRUSH_MAX_ISA_LEVEL
#define KVCRUSH_ISA_LEVEL KVCRUSH_COMPILER_ISA_LEVEL
#else
#define KVCRUSH_ISA_LEVEL KVCRUSH_MAX_ISA_LEVEL
#endif

// Whether the intrinsics of a level may be used in this translation unit.
// Kernels for a level are only defined when this holds.
#define KVCRUSH_HAS_AVX2 (KVCRUSH_COMPILER_ISA_LEVEL >= KVCRUSH_ISA_LEVEL_avx2)
#define KVCRUSH_HAS_AVX512 (KVCRUSH_COMPILER_ISA_LEVEL >= KVCRUSH_ISA_LEVEL_avx512)

// Every function that loops over data lives in an inline namespace named
// after the instruction sets the compiler may use in this translation unit.
// Two translation units built with different flags therefore never share a
// symbol for such a function (not even for the scalar kernel, which the
// compiler may auto-vectorise), so the linker can never hand AVX-512 code to
// the baseline path. Callers never spell the namespace: it is inline.
#if defined(__AVX512F__)
#if KVCRUSH_COMPILER_ISA_LEVEL == KVCRUSH_ISA_LEVEL_avx512
#define KVCRUSH_TARGET_NS target_avx512
#else
#define KVCRUSH_TARGET_NS target_avx512_partial
#endif
#elif defined(__AVX2__)
#if KVCRUSH_COMPILER_ISA_LEVEL == KVCRUSH_ISA_LEVEL_avx2
#define KVCRUSH_TARGET_NS target_avx2
#else
#define KVCRUSH_TARGET_NS target_avx2_partial
#endif
#elif defined(__AVX__)
#define KVCRUSH_TARGET_NS target_avx
#else
#define KVCRUSH_TARGET_NS target_baseline
#endif

#if !defined(KVCRUSH_ENABLE_BOUNDS_CHECKS)
#if defined(NDEBUG)
#define KVCRUSH_ENABLE_BOUNDS_CHECKS 0
#else
#define KVCRUSH_ENABLE_BOUNDS_CHECKS 1
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define KVCRUSH_RESTRICT __restrict__
#define KVCRUSH_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVCRUSH_UNLIKELY(x) __builtin_expect(!!(x), 0)
// For small kernel pieces called from inside a hot loop, whose vector
// arguments would otherwise pass through memory when GCC declines to inline.
#define KVCRUSH_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KVCRUSH_RESTRICT
#define KVCRUSH_LIKELY(x) (x)
#define KVCRUSH_UNLIKELY(x) (x)
#define KVCRUSH_ALWAYS_INLINE inline
#endif
