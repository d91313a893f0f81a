// Vectorisable float/double exp and log1p for softplus_ζ on CPU (no libm calls, branch-free), so
// that GCC/Clang turn the elementwise loops of ops_softplus.cpp into SIMD code.
//
//   exp_nonpos(x), x ≤ 0:  Cody–Waite reduction x = k·ln2 + r, |r| ≤ ln2/2, Taylor polynomial
//                          (float: Cephes' degree-5 minimax form; double: Taylor to degree 13, truncation < 4e-18), 2^k
//                          built in the exponent bits. Below e^-86 (float) / e^-707 (double) the
//                          result is flushed to +0 — those values are at the bottom of the normal
//                          range, where the softplus output itself would be denormal.
//   log1p_unit(e), 0 ≤ e ≤ 1:  2·atanh(s), s = e/(2+e) ∈ [0, 1/3] — no cancellation; odd series to
//                          s^15 (float) / s^33 (double).
// Callers run with flush-to-zero / denormals-are-zero set (ScopedFlushDenormals): vector code
// evaluates both sides of every select, and denormal arithmetic is ~100× slower on x86.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define GCONV_HAVE_MXCSR 1
#endif

// SIMD clones of the functions that hold the hot loops: AVX2(+FMA) and baseline, picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define GCONV_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define GCONV_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GCONV_SIMD_CLONES
#endif

namespace gconv_math {

// FTZ | DAZ for the current thread while in scope (restored afterwards).
struct ScopedFlushDenormals {
#ifdef GCONV_HAVE_MXCSR
  unsigned int saved;
  ScopedFlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~ScopedFlushDenormals() { _mm_setcsr(saved); }
#endif
};

template <typename T> struct Bits;
template <> struct Bits<float> { using I = int32_t; static constexpr int mant = 23, bias = 127; };
template <> struct Bits<double> { using I = int64_t; static constexpr int mant = 52, bias = 1023; };

// exp(x) for x <= 0 (NaN propagates); results below the smallest normal number flush to +0.
template <typename T>
__attribute__((always_inline)) inline T exp_nonpos(T x) {
  using I = typename Bits<T>::I;
  constexpr bool F = sizeof(T) == 4;
  const T lim = F ? T(-86.0) : T(-707.0);  // e^lim is a normal number: no denormal arithmetic
  const T inv_ln2 = T(1.4426950408889634);
  const T ln2_hi = F ? T(0.693145751953125) : T(6.93147180369123816490e-01);
  const T ln2_lo = F ? T(1.428606765330187e-06) : T(1.90821492927058770002e-10);
  const T magic = F ? T(12582912.0) : T(6755399441055744.0);  // 1.5·2^mant: round to nearest
  const bool nan = x != x;
  T xc = ((x < lim) | nan) ? lim : x;
  const T kf = (xc * inv_ln2 + magic) - magic;
  const T r = (xc - kf * ln2_hi) - kf * ln2_lo;
  T p;
  if constexpr (F) {  // Cephes expf minimax polynomial (≈ 1 ulp on |r| ≤ ln2/2)
    p = T(1.9875691500e-4);
    p = p * r + T(1.3981999507e-3); p = p * r + T(8.3334519073e-3); p = p * r + T(4.1665795894e-2);
    p = p * r + T(1.6666665459e-1); p = p * r + T(5.0000001201e-1);
    p = p * (r * r) + r + T(1);
  } else {
    p = T(1.0 / 6227020800.0);
    p = p * r + T(1.0 / 479001600.0); p = p * r + T(1.0 / 39916800.0); p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);    p = p * r + T(1.0 / 40320.0);    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);       p = p * r + T(1.0 / 120.0);      p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);         p = p * r + T(0.5);              p = p * r + T(1);  p = p * r + T(1);
  }
  const I k = static_cast<I>(static_cast<int32_t>(kf));  // |k| < 1100: the int32 conversion vectorises
  const I bits = (k + Bits<T>::bias) << Bits<T>::mant;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  const T res = p * scale;
  return nan ? x : (x < lim ? T(0) : res);
}

// log1p(e) for e in [0, 1]: 2·atanh(s), s = e/(2+e) ∈ [0, 1/3] (no cancellation).
template <typename T>
__attribute__((always_inline)) inline T log1p_unit(T e) {
  const T s = e / (T(2) + e);
  const T s2 = s * s;
  T p;
  if constexpr (sizeof(T) == 4) {
    p = T(1.0 / 15);
    p = p * s2 + T(1.0 / 13); p = p * s2 + T(1.0 / 11); p = p * s2 + T(1.0 / 9); p = p * s2 + T(1.0 / 7);
    p = p * s2 + T(1.0 / 5);  p = p * s2 + T(1.0 / 3);  p = p * s2 + T(1);
  } else {
    p = T(1.0 / 33);
    for (int k = 15; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
  }
  return T(2) * s * p;
}

// softplus_ζ(z) = max(z, 0) + log1p(exp(−|ζz|))/ζ
template <typename T>
__attribute__((always_inline)) inline T softplus1(T z, T zeta, T inv_zeta) {
  const T t = z * zeta;
  const T e = exp_nonpos<T>(t > T(0) ? -t : t);
  const T l = log1p_unit<T>(e);
  return (z > T(0) ? z : T(0)) + l * inv_zeta;
}

// sigmoid(t) = 1/(1+e) for t ≥ 0, e/(1+e) for t < 0, e = exp(−|t|)
template <typename T>
__attribute__((always_inline)) inline T sigmoid1(T t) {
  const T e = exp_nonpos<T>(t > T(0) ? -t : t);
  const T d = T(1) + e;
  return (t >= T(0) ? T(1) : e) / d;  // one division (vector code evaluates both sides of a select)
}
}  // namespace gconv_math
