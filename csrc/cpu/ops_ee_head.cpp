// EE head (seed 000, eq. 3.4) on CPU tensors: torch.ops.gconv_cpu.ee_head_fwd / ee_head_bwd.
// The plan (chunked BLAS GEMMs, saved tensors, gradient GEMMs) is in ops_ee_head_host.h; this file
// holds the fused OpenMP epilogues: gate · value · V with the reduction over k (forward), and
// dP / dr / dV in one pass over a chunk (backward). float16 / bfloat16 compute in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "ops_ee_head_host.h"

namespace {

template <typename T>
inline T sigm(T t) {
  return T(1) / (T(1) + std::exp(-t));  // exp overflow → 0, NaN propagates
}

struct CpuEpi {
  static const char* ns() { return "gconv_cpu"; }
  static int64_t chunk_elems() { return int64_t(1) << 20; }  // 4 MiB of fp32 per B×N buffer

  // f[b, j] = Σ_k V[j,k]·sigmoid(ζ′·gate[b,n])·a[b,n];  optionally s_out = sigmoid(ζ′·gate)
  static void fwd(const at::Tensor& a, const at::Tensor& gate, const at::Tensor& v, int64_t m_y, int64_t m_h,
                  double zeta, at::Tensor f, at::Tensor s_out) {
    const int64_t rows = a.size(0), N = m_y * m_h;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gconv_ee_fwd_epi", [&] {
      using op_t = at::opmath_type<scalar_t>;
      const scalar_t* ap = a.const_data_ptr<scalar_t>();
      const scalar_t* rp = gate.const_data_ptr<scalar_t>();
      const scalar_t* vp = v.const_data_ptr<scalar_t>();
      scalar_t* fp = f.mutable_data_ptr<scalar_t>();
      scalar_t* sp = s_out.defined() ? s_out.mutable_data_ptr<scalar_t>() : nullptr;
      const op_t zt = static_cast<op_t>(zeta);
      const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(m_h, 1));
      at::parallel_for(0, rows * m_y, grain, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t b = idx / m_y, j = idx % m_y;
          const int64_t base = b * N + j * m_h;
          op_t acc = 0;
          for (int64_t k = 0; k < m_h; ++k) {
            const op_t s = sigm<op_t>(zt * static_cast<op_t>(rp[base + k]));
            acc += static_cast<op_t>(vp[j * m_h + k]) * s * static_cast<op_t>(ap[base + k]);
            if (sp) sp[base + k] = static_cast<scalar_t>(s);
          }
          fp[b * m_y + j] = static_cast<scalar_t>(acc);
        }
      });
    });
  }

  // dP, dr (frozen, if defined) and dv_acc += Σ_b g·s·a over one chunk. Threads own column ranges,
  // so the dV sums are race-free and deterministic.
  static void bwd(const at::Tensor& g, const at::Tensor& a, const at::Tensor& gate, bool frozen, bool gate_is_s,
                  const at::Tensor& v, int64_t m_y, int64_t m_h, double zeta, at::Tensor dp, at::Tensor dr,
                  at::Tensor dv_acc) {
    const int64_t rows = g.size(0), N = m_y * m_h;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gconv_ee_bwd_epi", [&] {
      using op_t = at::opmath_type<scalar_t>;
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* ap = a.defined() ? a.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* qp = gate.defined() ? gate.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* vp = v.const_data_ptr<scalar_t>();
      scalar_t* dpp = dp.defined() ? dp.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* drp = dr.defined() ? dr.mutable_data_ptr<scalar_t>() : nullptr;
      acc_t* dvp = dv_acc.defined() ? dv_acc.mutable_data_ptr<acc_t>() : nullptr;
      const op_t zt = static_cast<op_t>(zeta);
      at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        std::vector<op_t> dvl(dvp ? n1 - n0 : 0, op_t(0));
        for (int64_t b = 0; b < rows; ++b) {
          const scalar_t* grow = gp + b * m_y;
          for (int64_t n = n0; n < n1; ++n) {
            const int64_t i = b * N + n;
            const op_t gb = static_cast<op_t>(grow[n / m_h]);
            const op_t gv = gb * static_cast<op_t>(vp[n]);
            const op_t av = ap ? static_cast<op_t>(ap[i]) : op_t(0);
            op_t s;
            if (!frozen) s = sigm<op_t>(zt * av);
            else if (gate_is_s) s = static_cast<op_t>(qp[i]);
            else s = sigm<op_t>(zt * static_cast<op_t>(qp[i]));
            const op_t ds = zt * s * (op_t(1) - s);
            if (dpp) dpp[i] = static_cast<scalar_t>(frozen ? gv * s : gv * (s + av * ds));
            if (drp) drp[i] = static_cast<scalar_t>(gv * av * ds);
            if (dvp) dvl[n - n0] += gb * s * av;
          }
        }
        if (dvp) for (int64_t n = n0; n < n1; ++n) dvp[n] += static_cast<acc_t>(dvl[n - n0]);
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> ee_head_fwd(const at::Tensor& z, const at::Tensor& w,
                                                           const at::Tensor& v, const c10::optional<at::Tensor>& r,
                                                           double zeta, int64_t save) {
  TORCH_CHECK(z.device().is_cpu(), "gconv_cpu.ee_head_fwd: tensors must be on the CPU, got ", z.device());
  return gconv_ee::forward<CpuEpi>(z, w, v, r, zeta, save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ee_head_bwd(const at::Tensor& g, const at::Tensor& z,
                                                           const at::Tensor& w, const at::Tensor& v,
                                                           const c10::optional<at::Tensor>& r,
                                                           const at::Tensor& a_saved, const at::Tensor& s_saved,
                                                           double zeta, int64_t needs) {
  TORCH_CHECK(z.device().is_cpu(), "gconv_cpu.ee_head_bwd: tensors must be on the CPU, got ", z.device());
  return gconv_ee::backward<CpuEpi>(g, z, w, v, r, a_saved, s_saved, zeta, needs);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gconv_cpu, m) {
  m.def("ee_head_fwd(Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, float gate_zeta, "
        "int save) -> (Tensor, Tensor, Tensor)");
  m.def("ee_head_bwd(Tensor grad, Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, "
        "Tensor saved_a, Tensor saved_s, float gate_zeta, int needs) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gconv_cpu, CPU, m) {
  m.impl("ee_head_fwd", &ee_head_fwd);
  m.impl("ee_head_bwd", &ee_head_bwd);
}
