// softplus_ζ on CPU tensors: torch.ops.gconv_cpu.softplus_fwd / softplus_bwd.
//
//   forward   y  = max(z, 0) + log1p(exp(-|ζz|))/ζ         (never overflows; ±inf → the limits)
//   backward  dz = dy · sigmoid(ζz),  stable at both tails
//
// One pass each, SIMD: the loops below use the branch-free exp/log1p of ops_softplus_math.h and
// are compiled twice (AVX2+FMA and baseline x86-64, chosen at load time); threads via at::parallel_for.
// float32 / float64 compute in their own precision; float16 / bfloat16 in float32 (the same policy
// as the GPU kernels). Outputs that would be denormal (|y| below ~1e-38 in float32, ~1e-307 in
// float64) are flushed to zero. Dense tensors in any dimension order are processed over their
// storage and the result has the input's strides; anything else is made contiguous first.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")  // lets the selects in the loops vectorise
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "ops_softplus_math.h"

namespace gconv_softplus_cpu {

using gconv_math::sigmoid1;
using gconv_math::softplus1;

GCONV_SIMD_CLONES void fwd_f32(const float* z, float* y, int64_t n, float zeta, float inv) {
  for (int64_t i = 0; i < n; ++i) y[i] = softplus1<float>(z[i], zeta, inv);
}
GCONV_SIMD_CLONES void fwd_f64(const double* z, double* y, int64_t n, double zeta, double inv) {
  for (int64_t i = 0; i < n; ++i) y[i] = softplus1<double>(z[i], zeta, inv);
}
GCONV_SIMD_CLONES void bwd_f32(const float* g, const float* z, float* d, int64_t n, float zeta) {
  for (int64_t i = 0; i < n; ++i) d[i] = g[i] * sigmoid1<float>(z[i] * zeta);
}
GCONV_SIMD_CLONES void bwd_f64(const double* g, const double* z, double* d, int64_t n, double zeta) {
  for (int64_t i = 0; i < n; ++i) d[i] = g[i] * sigmoid1<double>(z[i] * zeta);
}

constexpr int64_t kGrain = 32768;
constexpr int64_t kTile = 1024;  // half types: convert a tile to float, run the float loop, convert back

template <typename scalar_t>
void fwd(const scalar_t* z, scalar_t* y, int64_t n, double zeta) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    gconv_math::ScopedFlushDenormals ftz;
    if constexpr (std::is_same_v<scalar_t, double>) {
      fwd_f64(z + b, y + b, e - b, zeta, 1.0 / zeta);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      fwd_f32(z + b, y + b, e - b, static_cast<float>(zeta), static_cast<float>(1.0 / zeta));
    } else {
      float zi[kTile], yo[kTile];
      for (int64_t t = b; t < e; t += kTile) {
        const int64_t m = std::min(kTile, e - t);
        for (int64_t i = 0; i < m; ++i) zi[i] = static_cast<float>(z[t + i]);
        fwd_f32(zi, yo, m, static_cast<float>(zeta), static_cast<float>(1.0 / zeta));
        for (int64_t i = 0; i < m; ++i) y[t + i] = static_cast<scalar_t>(yo[i]);
      }
    }
  });
}

template <typename scalar_t>
void bwd(const scalar_t* g, const scalar_t* z, scalar_t* d, int64_t n, double zeta) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    gconv_math::ScopedFlushDenormals ftz;
    if constexpr (std::is_same_v<scalar_t, double>) {
      bwd_f64(g + b, z + b, d + b, e - b, zeta);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      bwd_f32(g + b, z + b, d + b, e - b, static_cast<float>(zeta));
    } else {
      float gi[kTile], zi[kTile], dout[kTile];
      for (int64_t t = b; t < e; t += kTile) {
        const int64_t m = std::min(kTile, e - t);
        for (int64_t i = 0; i < m; ++i) {
          gi[i] = static_cast<float>(g[t + i]);
          zi[i] = static_cast<float>(z[t + i]);
        }
        bwd_f32(gi, zi, dout, m, static_cast<float>(zeta));
        for (int64_t i = 0; i < m; ++i) d[t + i] = static_cast<scalar_t>(dout[i]);
      }
    }
  });
}

at::Tensor dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "gconv_cpu.softplus: ", what, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()),
              "gconv_cpu.softplus: ", what, " must be a floating-point tensor, got ", t.scalar_type());
}

at::Tensor softplus_fwd(const at::Tensor& z_in, double zeta) {
  check_input(z_in, "z");
  TORCH_CHECK(zeta > 0 && std::isfinite(zeta), "gconv_cpu.softplus: zeta must be positive and finite, got ", zeta);
  const at::Tensor z = dense(z_in);
  at::Tensor y = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_fwd", [&] {
    fwd<scalar_t>(z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), z.numel(), zeta);
  });
  return y;
}

at::Tensor softplus_bwd(const at::Tensor& g_in, const at::Tensor& z_in, double zeta) {
  check_input(z_in, "z");
  check_input(g_in, "grad");
  TORCH_CHECK(g_in.sizes() == z_in.sizes(), "gconv_cpu.softplus_bwd: grad shape ", g_in.sizes(),
              " does not match z shape ", z_in.sizes());
  TORCH_CHECK(g_in.scalar_type() == z_in.scalar_type(), "gconv_cpu.softplus_bwd: grad dtype ",
              g_in.scalar_type(), " does not match z dtype ", z_in.scalar_type());
  at::Tensor z = dense(z_in), g = g_in;
  if (!g.is_non_overlapping_and_dense() || g.strides() != z.strides()) {
    z = z.contiguous();
    g = g.contiguous();
  }
  at::Tensor dz = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_bwd", [&] {
    bwd<scalar_t>(g.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), dz.mutable_data_ptr<scalar_t>(),
                  z.numel(), zeta);
  });
  return dz;
}

}  // namespace gconv_softplus_cpu

TORCH_LIBRARY_FRAGMENT(gconv_cpu, m) {
  m.def("softplus_fwd(Tensor z, float zeta) -> Tensor");
  m.def("softplus_bwd(Tensor grad, Tensor z, float zeta) -> Tensor");
}

TORCH_LIBRARY_IMPL(gconv_cpu, CPU, m) {
  m.impl("softplus_fwd", &gconv_softplus_cpu::softplus_fwd);
  m.impl("softplus_bwd", &gconv_softplus_cpu::softplus_bwd);
}
