// EE head (seed 000, eq. 3.4) on CUDA tensors: torch.ops.gconv_cuda.ee_head_fwd / ee_head_bwd.
// The plan (cuBLAS GEMMs through ATen into bounded row chunks, saved tensors, gradient GEMMs) is
// shared with the CPU kernels in ../cpu/ops_ee_head_host.h; this file holds the fused epilogues:
//   forward   one warp per (row b, output j): bias (constant neuron), gate · value · V and the
//             reduction over k
//   backward  a (32 × 8)-thread block per column strip: dP / dr per element and the dV and Σ_b dP
//             (bias-column) sums
//             (block partials summed on the host in a fixed order: deterministic)
// float16 / bfloat16 compute in float32 (at::opmath_type); offsets are 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/ops_ee_head_host.h"

namespace {

template <typename T>
__device__ __forceinline__ T sigm(T t) {
  return T(1) / (T(1) + exp(-t));  // exp overflow → 0, NaN propagates
}

// r == nullptr: self-gated (the gate is a itself). a and r hold the bias-free GEMM results.
template <typename scalar_t>
__global__ void ee_fwd_epilogue(scalar_t* __restrict__ a, const scalar_t* __restrict__ r,
                                const scalar_t* __restrict__ wb, const scalar_t* __restrict__ rb,
                                const scalar_t* __restrict__ v, scalar_t* __restrict__ f,
                                scalar_t* __restrict__ s_out, bool write_a, int64_t rows, int64_t m_y, int64_t m_h,
                                at::opmath_type<scalar_t> zeta) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows * m_y) return;  // uniform per warp
  const int64_t b = warp / m_y, j = warp % m_y;
  const int64_t base = b * m_y * m_h + j * m_h, cb = j * m_h;
  op_t acc = 0;
  for (int64_t k = lane; k < m_h; k += 32) {
    const op_t av = static_cast<op_t>(a[base + k]) + static_cast<op_t>(wb[cb + k]);
    const op_t rv = r ? static_cast<op_t>(r[base + k]) + static_cast<op_t>(rb[cb + k]) : av;
    const op_t s = sigm<op_t>(zeta * rv);
    acc += static_cast<op_t>(v[cb + k]) * s * av;
    if (s_out) s_out[base + k] = static_cast<scalar_t>(s);
    if (write_a) a[base + k] = static_cast<scalar_t>(av);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) f[b * m_y + j] = static_cast<scalar_t>(acc);
}

constexpr int kTX = 32, kTY = 8;

template <typename scalar_t, typename acc_t>
__global__ void ee_bwd_epilogue(const scalar_t* __restrict__ g, const scalar_t* __restrict__ a,
                                const scalar_t* __restrict__ gate, const scalar_t* __restrict__ v,
                                scalar_t* __restrict__ dp, scalar_t* __restrict__ dr, acc_t* __restrict__ dv_part,
                                acc_t* __restrict__ dwb_part, int64_t rows, int64_t m_y, int64_t m_h, bool frozen,
                                bool gate_is_s, at::opmath_type<scalar_t> zeta) {
  using op_t = at::opmath_type<scalar_t>;
  __shared__ op_t red[kTY][kTX + 1];
  __shared__ op_t red2[kTY][kTX + 1];
  const int64_t N = m_y * m_h;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTX + threadIdx.x;
  op_t dvl = 0, dwl = 0;
  if (n < N) {
    const int64_t j = n / m_h;
    const op_t vn = static_cast<op_t>(v[n]);
    for (int64_t b = static_cast<int64_t>(blockIdx.y) * kTY + threadIdx.y; b < rows;
         b += static_cast<int64_t>(gridDim.y) * kTY) {
      const int64_t i = b * N + n;
      const op_t gb = static_cast<op_t>(g[b * m_y + j]);
      const op_t gv = gb * vn;
      const op_t av = a ? static_cast<op_t>(a[i]) : op_t(0);
      op_t s;
      if (!frozen) s = sigm<op_t>(zeta * av);
      else if (gate_is_s) s = static_cast<op_t>(gate[i]);
      else s = sigm<op_t>(zeta * static_cast<op_t>(gate[i]));
      const op_t ds = zeta * s * (op_t(1) - s);
      if (dp) {
        const scalar_t p = static_cast<scalar_t>(frozen ? gv * s : gv * (s + av * ds));
        dp[i] = p;
        dwl += static_cast<op_t>(p);
      }
      if (dr) dr[i] = static_cast<scalar_t>(gv * av * ds);
      dvl += gb * s * av;
    }
  }
  if (dv_part || dwb_part) {  // uniform branch: every thread reaches the barrier
    red[threadIdx.y][threadIdx.x] = dvl;
    red2[threadIdx.y][threadIdx.x] = dwl;
    __syncthreads();
    if (threadIdx.y == 0 && n < N) {
      op_t t = 0, t2 = 0;
#pragma unroll
      for (int y = 0; y < kTY; ++y) {
        t += red[y][threadIdx.x];
        t2 += red2[y][threadIdx.x];
      }
      if (dv_part) dv_part[static_cast<int64_t>(blockIdx.y) * N + n] = static_cast<acc_t>(t);
      if (dwb_part) dwb_part[static_cast<int64_t>(blockIdx.y) * N + n] = static_cast<acc_t>(t2);
    }
  }
}

struct CudaEpi {
  static const char* ns() { return "gconv_cuda"; }
  static int64_t chunk_elems() { return int64_t(1) << 24; }  // 64 MiB of fp32 per B×N buffer

  static void fwd(at::Tensor a, const at::Tensor& r, const at::Tensor& wb, const at::Tensor& rb, const at::Tensor& v,
                  int64_t m_y, int64_t m_h, double zeta, at::Tensor f, at::Tensor s_out, bool write_a) {
    const int64_t rows = a.size(0);
    const int64_t warps = rows * m_y;
    constexpr int threads = 256;
    const int64_t blocks = (warps * 32 + threads - 1) / threads;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "gconv_cuda.ee_head: batch too large for one launch");
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gconv_ee_fwd_epi_cuda", [&] {
      using op_t = at::opmath_type<scalar_t>;
      ee_fwd_epilogue<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
          a.mutable_data_ptr<scalar_t>(), r.defined() ? r.const_data_ptr<scalar_t>() : nullptr,
          wb.const_data_ptr<scalar_t>(), rb.defined() ? rb.const_data_ptr<scalar_t>() : nullptr,
          v.const_data_ptr<scalar_t>(), f.mutable_data_ptr<scalar_t>(),
          s_out.defined() ? s_out.mutable_data_ptr<scalar_t>() : nullptr, write_a, rows, m_y, m_h,
          static_cast<op_t>(zeta));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void bwd(const at::Tensor& g, const at::Tensor& a, const at::Tensor& gate, bool frozen, bool gate_is_s,
                  const at::Tensor& v, int64_t m_y, int64_t m_h, double zeta, at::Tensor dp, at::Tensor dr,
                  at::Tensor dv_acc, at::Tensor dwb_acc) {
    const int64_t rows = g.size(0), N = m_y * m_h;
    const int64_t gx = (N + kTX - 1) / kTX;
    const int64_t gy = std::max<int64_t>(1, std::min<int64_t>((rows + kTY - 1) / kTY, 32));
    TORCH_CHECK(gx < (int64_t(1) << 31), "gconv_cuda.ee_head: too many hidden units for one launch");
    at::Tensor dv_part = dv_acc.defined() ? at::empty({gy, N}, dv_acc.options()) : at::Tensor();
    at::Tensor dwb_part = dwb_acc.defined() ? at::empty({gy, N}, dwb_acc.options()) : at::Tensor();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gconv_ee_bwd_epi_cuda", [&] {
      using op_t = at::opmath_type<scalar_t>;
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      ee_bwd_epilogue<scalar_t, acc_t><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)),
                                         dim3(kTX, kTY), 0, stream>>>(
          g.const_data_ptr<scalar_t>(), a.defined() ? a.const_data_ptr<scalar_t>() : nullptr,
          gate.defined() ? gate.const_data_ptr<scalar_t>() : nullptr, v.const_data_ptr<scalar_t>(),
          dp.defined() ? dp.mutable_data_ptr<scalar_t>() : nullptr,
          dr.defined() ? dr.mutable_data_ptr<scalar_t>() : nullptr,
          dv_part.defined() ? dv_part.mutable_data_ptr<acc_t>() : nullptr,
          dwb_part.defined() ? dwb_part.mutable_data_ptr<acc_t>() : nullptr, rows, m_y, m_h, frozen, gate_is_s,
          static_cast<op_t>(zeta));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (dv_acc.defined()) dv_acc.add_(dv_part.sum(0));
    if (dwb_acc.defined()) dwb_acc.add_(dwb_part.sum(0));
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> ee_head_fwd(const at::Tensor& z, const at::Tensor& w,
                                                           const at::Tensor& v, const c10::optional<at::Tensor>& r,
                                                           double zeta, int64_t save) {
  TORCH_CHECK(z.is_cuda(), "gconv_cuda.ee_head_fwd: tensors must be on a CUDA device, got ", z.device());
  const c10::cuda::CUDAGuard guard(z.device());
  return gconv_ee::forward<CudaEpi>(z, w, v, r, zeta, save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ee_head_bwd(const at::Tensor& g, const at::Tensor& z,
                                                           const at::Tensor& w, const at::Tensor& v,
                                                           const c10::optional<at::Tensor>& r,
                                                           const at::Tensor& a_saved, const at::Tensor& s_saved,
                                                           double zeta, int64_t needs) {
  TORCH_CHECK(z.is_cuda(), "gconv_cuda.ee_head_bwd: tensors must be on a CUDA device, got ", z.device());
  const c10::cuda::CUDAGuard guard(z.device());
  return gconv_ee::backward<CudaEpi>(g, z, w, v, r, a_saved, s_saved, zeta, needs);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gconv_cuda, m) {
  m.def("ee_head_fwd(Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, float gate_zeta, "
        "int save) -> (Tensor, Tensor, Tensor)");
  m.def("ee_head_bwd(Tensor grad, Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, "
        "Tensor saved_a, Tensor saved_s, float gate_zeta, int needs) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gconv_cuda, CUDA, m) {
  m.impl("ee_head_fwd", &ee_head_fwd);
  m.impl("ee_head_bwd", &ee_head_bwd);
}
