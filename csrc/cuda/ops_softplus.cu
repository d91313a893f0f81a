// softplus_ζ on CUDA tensors: torch.ops.gconv_cuda.softplus_fwd / softplus_bwd.
//
//   forward   y  = max(z, 0) + log1p(exp(-|ζz|))/ζ         (never overflows; ±inf → the limits)
//   backward  dz = dy · sigmoid(ζz),  stable at both tails
//
// One pass each, memory-bound: 16-byte vector loads/stores where the pointers are aligned, a grid-
// stride loop with 64-bit offsets (no int32 overflow past 2^31 elements). float16 / bfloat16 are
// computed in float32 (at::opmath_type). Dense tensors in any dimension order are processed over
// their storage; the result has the input's strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

template <typename T>
__device__ __forceinline__ T softplus_one(T z, T zeta, T inv_zeta) {
  const T pos = z > T(0) ? z : T(0);
  return pos + log1p(exp(-fabs(z * zeta))) * inv_zeta;
}

template <typename T>
__device__ __forceinline__ T sigmoid_one(T t) {
  const T e = exp(-fabs(t));
  return t >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);  // NaN: e is NaN
}

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, int VEC>
__global__ void softplus_fwd_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ y, int64_t n,
                                    at::opmath_type<scalar_t> zeta, at::opmath_type<scalar_t> inv_zeta) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    Pack<scalar_t, VEC> p = reinterpret_cast<const Pack<scalar_t, VEC>*>(z)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) p.v[k] = static_cast<scalar_t>(softplus_one<op_t>(static_cast<op_t>(p.v[k]), zeta, inv_zeta));
    reinterpret_cast<Pack<scalar_t, VEC>*>(y)[i] = p;
  }
  for (int64_t i = nvec * VEC + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = static_cast<scalar_t>(softplus_one<op_t>(static_cast<op_t>(z[i]), zeta, inv_zeta));
  }
}

template <typename scalar_t, int VEC>
__global__ void softplus_bwd_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                                    scalar_t* __restrict__ dz, int64_t n, at::opmath_type<scalar_t> zeta) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    Pack<scalar_t, VEC> pz = reinterpret_cast<const Pack<scalar_t, VEC>*>(z)[i];
    const Pack<scalar_t, VEC> pg = reinterpret_cast<const Pack<scalar_t, VEC>*>(g)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const op_t s = sigmoid_one<op_t>(static_cast<op_t>(pz.v[k]) * zeta);
      pz.v[k] = static_cast<scalar_t>(static_cast<op_t>(pg.v[k]) * s);
    }
    reinterpret_cast<Pack<scalar_t, VEC>*>(dz)[i] = pz;
  }
  for (int64_t i = nvec * VEC + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dz[i] = static_cast<scalar_t>(static_cast<op_t>(g[i]) * sigmoid_one<op_t>(static_cast<op_t>(z[i]) * zeta));
  }
}

constexpr int kThreads = 256;

int blocks_for(int64_t work) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t want = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, static_cast<int64_t>(sms) * 8)));
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) % 16) == 0; }

at::Tensor dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "gconv_cuda.softplus: ", what, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()),
              "gconv_cuda.softplus: ", what, " must be a floating-point tensor, got ", t.scalar_type());
}

at::Tensor softplus_fwd(const at::Tensor& z_in, double zeta) {
  check_input(z_in, "z");
  TORCH_CHECK(zeta > 0 && std::isfinite(zeta), "gconv_cuda.softplus: zeta must be positive and finite, got ", zeta);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = dense(z_in);
  at::Tensor y = at::empty_like(z);
  const int64_t n = z.numel();
  if (n == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_fwd_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (aligned16(zp) && aligned16(yp)) {
      softplus_fwd_kernel<scalar_t, VEC><<<blocks_for(n / VEC + 1), kThreads, 0, stream>>>(
          zp, yp, n, static_cast<op_t>(zeta), static_cast<op_t>(1.0 / zeta));
    } else {
      softplus_fwd_kernel<scalar_t, 1><<<blocks_for(n), kThreads, 0, stream>>>(
          zp, yp, n, static_cast<op_t>(zeta), static_cast<op_t>(1.0 / zeta));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor softplus_bwd(const at::Tensor& g_in, const at::Tensor& z_in, double zeta) {
  check_input(z_in, "z");
  check_input(g_in, "grad");
  TORCH_CHECK(g_in.sizes() == z_in.sizes(), "gconv_cuda.softplus_bwd: grad shape ", g_in.sizes(),
              " does not match z shape ", z_in.sizes());
  TORCH_CHECK(g_in.scalar_type() == z_in.scalar_type(), "gconv_cuda.softplus_bwd: grad dtype ",
              g_in.scalar_type(), " does not match z dtype ", z_in.scalar_type());
  TORCH_CHECK(g_in.device() == z_in.device(), "gconv_cuda.softplus_bwd: grad and z are on different devices");
  const c10::cuda::CUDAGuard guard(z_in.device());
  at::Tensor z = dense(z_in), g = g_in;
  if (!g.is_non_overlapping_and_dense() || g.strides() != z.strides()) {
    z = z.contiguous();
    g = g.contiguous();
  }
  at::Tensor dz = at::empty_like(z);
  const int64_t n = z.numel();
  if (n == 0) return dz;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gconv_softplus_bwd_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
    if (aligned16(zp) && aligned16(gp) && aligned16(dp)) {
      softplus_bwd_kernel<scalar_t, VEC><<<blocks_for(n / VEC + 1), kThreads, 0, stream>>>(
          gp, zp, dp, n, static_cast<op_t>(zeta));
    } else {
      softplus_bwd_kernel<scalar_t, 1><<<blocks_for(n), kThreads, 0, stream>>>(gp, zp, dp, n, static_cast<op_t>(zeta));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dz;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gconv_cuda, m) {
  m.def("softplus_fwd(Tensor z, float zeta) -> Tensor");
  m.def("softplus_bwd(Tensor grad, Tensor z, float zeta) -> Tensor");
}

TORCH_LIBRARY_IMPL(gconv_cuda, CUDA, m) {
  m.impl("softplus_fwd", &softplus_fwd);
  m.impl("softplus_bwd", &softplus_bwd);
}
