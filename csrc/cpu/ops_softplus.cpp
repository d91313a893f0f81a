// softplus_ζ on CPU tensors: torch.ops.gconv_cpu.softplus_fwd / softplus_bwd.
//
//   forward   y  = max(z, 0) + log1p(exp(-|ζz|))/ζ         (never overflows; ±inf → the limits)
//   backward  dz = dy · sigmoid(ζz),  stable at both tails
//
// float32 / float64 compute in their own precision; float16 / bfloat16 in float32 (the same
// policy as the GPU kernels). Dense tensors in any dimension order are processed over their
// storage and the result has the input's strides; anything else is made contiguous first.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

namespace {

constexpr int64_t kGrain = 16384;

template <typename T>
inline T softplus_one(T z, T zeta, T inv_zeta) {
  const T pos = z > T(0) ? z : T(0);
  return pos + std::log1p(std::exp(-std::abs(z * zeta))) * inv_zeta;
}

template <typename T>
inline T sigmoid_one(T t) {
  const T e = std::exp(-std::abs(t));
  return t >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);  // NaN: e is NaN
}

at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

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
  const int64_t n = z.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_fwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const opmath_t zt = static_cast<opmath_t>(zeta), izt = static_cast<opmath_t>(1.0 / zeta);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        yp[i] = static_cast<scalar_t>(softplus_one<opmath_t>(static_cast<opmath_t>(zp[i]), zt, izt));
      }
    });
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
  const int64_t n = z.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_bwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
    const opmath_t zt = static_cast<opmath_t>(zeta);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t s = sigmoid_one<opmath_t>(static_cast<opmath_t>(zp[i]) * zt);
        dp[i] = static_cast<scalar_t>(static_cast<opmath_t>(gp[i]) * s);
      }
    });
  });
  return dz;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gconv_cpu, m) {
  m.def("softplus_fwd(Tensor z, float zeta) -> Tensor");
  m.def("softplus_bwd(Tensor grad, Tensor z, float zeta) -> Tensor");
}

TORCH_LIBRARY_IMPL(gconv_cpu, CPU, m) {
  m.impl("softplus_fwd", &softplus_fwd);
  m.impl("softplus_bwd", &softplus_bwd);
}
