// EE head (seed 000, eq. 3.4) on CPU tensors: torch.ops.gconv_cpu.ee_head_fwd / ee_head_bwd.
// The plan (chunked BLAS GEMMs, saved tensors, gradient GEMMs) is in ops_ee_head_host.h; this file
// holds the fused OpenMP epilogues: gate · value · V with the reduction over k (forward), and
// dP / dr / dV in one pass over a chunk (backward). float32 / float64 loops are SIMD (the
// branch-free sigmoid of ops_softplus_math.h, AVX2+FMA clones, FTZ); float16 / bfloat16 take a
// scalar loop computing in float32.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")  // lets the selects in the loops vectorise
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "ops_ee_head_host.h"
#include "ops_softplus_math.h"

namespace gconv_ee_cpu {

template <typename T>
inline T sigm(T t) {
  return T(1) / (T(1) + std::exp(-t));  // exp overflow → 0, NaN propagates
}

// ---- SIMD segments (float / double) ------------------------------------------------------------
// forward over one (row, output) segment: av = a + bias_w, rv = r + bias_r (= av self-gated),
// s = sigmoid(ζ′rv); returns Σ_k v·s·av; optionally stores s and writes av back into a.
template <typename T, bool FROZEN, bool STORE_S, bool WRITE_A>
__attribute__((always_inline)) inline T fwd_seg(T* a, const T* r, const T* wb, const T* rb, const T* v, T* s_out,
                                                int64_t m_h, T zeta) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < m_h; ++k) {
    const T av = a[k] + wb[k];
    T rv = av;
    if constexpr (FROZEN) rv = r[k] + rb[k];
    const T s = gconv_math::sigmoid1<T>(zeta * rv);
    if constexpr (STORE_S) s_out[k] = s;
    if constexpr (WRITE_A) a[k] = av;
    acc += v[k] * s * av;
  }
  return acc;
}

template <typename T>
__attribute__((always_inline)) inline T fwd_any(T* a, const T* r, const T* wb, const T* rb, const T* v, T* s_out,
                                                bool write_a, int64_t m_h, T zeta) {
  const int f = (r ? 4 : 0) | (s_out ? 2 : 0) | (write_a ? 1 : 0);
  switch (f) {
    case 0: return fwd_seg<T, false, false, false>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 1: return fwd_seg<T, false, false, true>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 2: return fwd_seg<T, false, true, false>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 3: return fwd_seg<T, false, true, true>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 4: return fwd_seg<T, true, false, false>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 5: return fwd_seg<T, true, false, true>(a, r, wb, rb, v, s_out, m_h, zeta);
    case 6: return fwd_seg<T, true, true, false>(a, r, wb, rb, v, s_out, m_h, zeta);
    default: return fwd_seg<T, true, true, true>(a, r, wb, rb, v, s_out, m_h, zeta);
  }
}

GCONV_SIMD_CLONES float fwd_seg_f32(float* a, const float* r, const float* wb, const float* rb, const float* v,
                                    float* s_out, bool write_a, int64_t m_h, float zeta) {
  return fwd_any<float>(a, r, wb, rb, v, s_out, write_a, m_h, zeta);
}
GCONV_SIMD_CLONES double fwd_seg_f64(double* a, const double* r, const double* wb, const double* rb, const double* v,
                                     double* s_out, bool write_a, int64_t m_h, double zeta) {
  return fwd_any<double>(a, r, wb, rb, v, s_out, write_a, m_h, zeta);
}

// backward over one row's columns of one output j (incoming gradient gb); KIND 0 self-gated (s from a), 1 frozen with r, 2 frozen with s.
// Accumulates per-column Σ g·s·a (dvl) and Σ dP (dwl) when asked.
template <typename T, int KIND, bool DP, bool DWB, bool DR, bool DV>
__attribute__((always_inline)) inline void bwd_seg(T gb, const T* v, const T* a, const T* q, T* dp, T* dr,
                                                   T* dvl, T* dwl, int64_t cnt, T zeta) {
  constexpr bool HA = KIND == 0 || DR || DV;
#pragma omp simd
  for (int64_t i = 0; i < cnt; ++i) {
    const T gv = gb * v[i];
    T av = T(0);
    if constexpr (HA) av = a[i];
    T s;
    if constexpr (KIND == 0) s = gconv_math::sigmoid1<T>(zeta * av);
    else if constexpr (KIND == 1) s = gconv_math::sigmoid1<T>(zeta * q[i]);
    else s = q[i];
    const T ds = zeta * s * (T(1) - s);
    if constexpr (DP) {
      const T p = KIND == 0 ? gv * (s + av * ds) : gv * s;
      dp[i] = p;
      if constexpr (DWB) dwl[i] += p;
    }
    if constexpr (DR) dr[i] = gv * av * ds;
    if constexpr (DV) dvl[i] += gb * s * av;
  }
}

template <typename T, int KIND>
__attribute__((always_inline)) inline void bwd_kind(T gcol, const T* v, const T* a, const T* q, T* dp, T* dr,
                                                    T* dvl, T* dwl, int64_t cnt, T zeta) {
  const int f = (dp ? 8 : 0) | (dp && dwl ? 4 : 0) | (dr ? 2 : 0) | (dvl ? 1 : 0);
#define GCONV_BWD_CASE(F, DP, DWB, DR, DV) \
  case F: return bwd_seg<T, KIND, DP, DWB, DR, DV>(gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
  switch (f) {
    GCONV_BWD_CASE(1, false, false, false, true)
    GCONV_BWD_CASE(2, false, false, true, false)
    GCONV_BWD_CASE(3, false, false, true, true)
    GCONV_BWD_CASE(8, true, false, false, false)
    GCONV_BWD_CASE(9, true, false, false, true)
    GCONV_BWD_CASE(10, true, false, true, false)
    GCONV_BWD_CASE(11, true, false, true, true)
    GCONV_BWD_CASE(12, true, true, false, false)
    GCONV_BWD_CASE(13, true, true, false, true)
    GCONV_BWD_CASE(14, true, true, true, false)
    GCONV_BWD_CASE(15, true, true, true, true)
    default: return;
  }
#undef GCONV_BWD_CASE
}

template <typename T>
__attribute__((always_inline)) inline void bwd_any(int kind, T gcol, const T* v, const T* a, const T* q, T* dp,
                                                   T* dr, T* dvl, T* dwl, int64_t cnt, T zeta) {
  if (kind == 0) bwd_kind<T, 0>(gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
  else if (kind == 1) bwd_kind<T, 1>(gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
  else bwd_kind<T, 2>(gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
}

GCONV_SIMD_CLONES void bwd_seg_f32(int kind, float gcol, const float* v, const float* a, const float* q,
                                   float* dp, float* dr, float* dvl, float* dwl, int64_t cnt, float zeta) {
  bwd_any<float>(kind, gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
}
GCONV_SIMD_CLONES void bwd_seg_f64(int kind, double gcol, const double* v, const double* a, const double* q,
                                   double* dp, double* dr, double* dvl, double* dwl, int64_t cnt, double zeta) {
  bwd_any<double>(kind, gcol, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
}

inline float fwd_seg_any(float* a, const float* r, const float* wb, const float* rb, const float* v, float* s,
                         bool write_a, int64_t m_h, float zeta) {
  return fwd_seg_f32(a, r, wb, rb, v, s, write_a, m_h, zeta);
}
inline double fwd_seg_any(double* a, const double* r, const double* wb, const double* rb, const double* v, double* s,
                          bool write_a, int64_t m_h, double zeta) {
  return fwd_seg_f64(a, r, wb, rb, v, s, write_a, m_h, zeta);
}
inline void bwd_seg_any(int kind, float g, const float* v, const float* a, const float* q, float* dp,
                        float* dr, float* dvl, float* dwl, int64_t cnt, float zeta) {
  bwd_seg_f32(kind, g, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
}
inline void bwd_seg_any(int kind, double g, const double* v, const double* a, const double* q, double* dp,
                        double* dr, double* dvl, double* dwl, int64_t cnt, double zeta) {
  bwd_seg_f64(kind, g, v, a, q, dp, dr, dvl, dwl, cnt, zeta);
}

// f[b, j] = Σ_k V[j,k]·sigmoid(ζ′·(r+bias_r))·(a+bias_w) for a chunk of rows (r null: self-gated);
// optionally s_out, and a + bias_w written back into a
template <typename scalar_t>
void epi_fwd(scalar_t* ap, const scalar_t* rp, const scalar_t* wbp, const scalar_t* rbp, const scalar_t* vp,
             scalar_t* fp, scalar_t* sp, bool write_a, int64_t rows, int64_t m_y, int64_t m_h, double zeta) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t N = m_y * m_h;
  const op_t zt = static_cast<op_t>(zeta);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(m_h, 1));
  at::parallel_for(0, rows * m_y, grain, [&](int64_t begin, int64_t end) {
    gconv_math::ScopedFlushDenormals ftz;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / m_y, j = idx % m_y;
      const int64_t base = b * N + j * m_h, cb = j * m_h;
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        fp[b * m_y + j] = fwd_seg_any(ap + base, rp ? rp + base : nullptr, wbp + cb, rp ? rbp + cb : nullptr,
                                      vp + cb, sp ? sp + base : nullptr, write_a, m_h, zt);
      } else {
        op_t acc = 0;
        for (int64_t k = 0; k < m_h; ++k) {
          const op_t av = static_cast<op_t>(ap[base + k]) + static_cast<op_t>(wbp[cb + k]);
          const op_t rv = rp ? static_cast<op_t>(rp[base + k]) + static_cast<op_t>(rbp[cb + k]) : av;
          const op_t s = sigm<op_t>(zt * rv);
          acc += static_cast<op_t>(vp[cb + k]) * s * av;
          if (sp) sp[base + k] = static_cast<scalar_t>(s);
          if (write_a) ap[base + k] = static_cast<scalar_t>(av);
        }
        fp[b * m_y + j] = static_cast<scalar_t>(acc);
      }
    }
  });
}

// dP, dr and the column sums dv_acc += Σ_b g·s·a, dwb_acc += Σ_b dP over a chunk of rows. Threads own
// column ranges, so the sums are race-free and deterministic.
template <typename scalar_t, typename acc_t>
void epi_bwd(const scalar_t* gp, const scalar_t* ap, const scalar_t* qp, const scalar_t* vp, scalar_t* dpp,
             scalar_t* drp, acc_t* dvp, acc_t* dwbp, int kind, int64_t rows, int64_t m_y, int64_t m_h,
             double zeta) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t N = m_y * m_h;
  const op_t zt = static_cast<op_t>(zeta);
  at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
    gconv_math::ScopedFlushDenormals ftz;
    const int64_t cnt = n1 - n0;
    std::vector<int64_t> jidx(cnt);
    for (int64_t i = 0; i < cnt; ++i) jidx[i] = (n0 + i) / m_h;
    std::vector<op_t> dvl(dvp ? cnt : 0, op_t(0)), dwl(dwbp ? cnt : 0, op_t(0));
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      for (int64_t b = 0; b < rows; ++b) {
        const scalar_t* grow = gp + b * m_y;
        for (int64_t c0 = n0; c0 < n1;) {   // runs of columns that belong to one output j
          const int64_t j = c0 / m_h, c1 = std::min(n1, (j + 1) * m_h), i0 = c0 - n0, o = b * N + c0;
          bwd_seg_any(kind, grow[j], vp + c0, ap ? ap + o : nullptr, qp ? qp + o : nullptr, dpp ? dpp + o : nullptr,
                      drp ? drp + o : nullptr, dvp ? dvl.data() + i0 : nullptr, dwbp ? dwl.data() + i0 : nullptr,
                      c1 - c0, zt);
          c0 = c1;
        }
      }
    } else {
      for (int64_t b = 0; b < rows; ++b) {
        const scalar_t* grow = gp + b * m_y;
        for (int64_t i = 0; i < cnt; ++i) {
          const int64_t n = n0 + i, idx = b * N + n;
          const op_t gb = static_cast<op_t>(grow[jidx[i]]);
          const op_t gv = gb * static_cast<op_t>(vp[n]);
          const op_t av = ap ? static_cast<op_t>(ap[idx]) : op_t(0);
          op_t s;
          if (kind == 0) s = sigm<op_t>(zt * av);
          else if (kind == 2) s = static_cast<op_t>(qp[idx]);
          else s = sigm<op_t>(zt * static_cast<op_t>(qp[idx]));
          const op_t ds = zt * s * (op_t(1) - s);
          if (dpp) {
            const scalar_t p = static_cast<scalar_t>(kind == 0 ? gv * (s + av * ds) : gv * s);
            dpp[idx] = p;
            if (dwbp) dwl[i] += static_cast<op_t>(p);
          }
          if (drp) drp[idx] = static_cast<scalar_t>(gv * av * ds);
          if (dvp) dvl[i] += gb * s * av;
        }
      }
    }
    if (dvp) for (int64_t i = 0; i < cnt; ++i) dvp[n0 + i] += static_cast<acc_t>(dvl[i]);
    if (dwbp) for (int64_t i = 0; i < cnt; ++i) dwbp[n0 + i] += static_cast<acc_t>(dwl[i]);
  });
}

struct CpuEpi {
  static const char* ns() { return "gconv_cpu"; }
  static int64_t chunk_elems() { return int64_t(1) << 22; }  // 16 MiB of fp32 per B×N buffer

  static void fwd(at::Tensor a, const at::Tensor& r, const at::Tensor& wb, const at::Tensor& rb, const at::Tensor& v,
                  int64_t m_y, int64_t m_h, double zeta, at::Tensor f, at::Tensor s_out, bool write_a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gconv_ee_fwd_epi", [&] {
      epi_fwd<scalar_t>(a.mutable_data_ptr<scalar_t>(), r.defined() ? r.const_data_ptr<scalar_t>() : nullptr,
                        wb.const_data_ptr<scalar_t>(), rb.defined() ? rb.const_data_ptr<scalar_t>() : nullptr,
                        v.const_data_ptr<scalar_t>(), f.mutable_data_ptr<scalar_t>(),
                        s_out.defined() ? s_out.mutable_data_ptr<scalar_t>() : nullptr, write_a, a.size(0), m_y,
                        m_h, zeta);
    });
  }

  static void bwd(const at::Tensor& g, const at::Tensor& a, const at::Tensor& gate, bool frozen, bool gate_is_s,
                  const at::Tensor& v, int64_t m_y, int64_t m_h, double zeta, at::Tensor dp, at::Tensor dr,
                  at::Tensor dv_acc, at::Tensor dwb_acc) {
    const int kind = !frozen ? 0 : (gate_is_s ? 2 : 1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gconv_ee_bwd_epi", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      epi_bwd<scalar_t, acc_t>(g.const_data_ptr<scalar_t>(), a.defined() ? a.const_data_ptr<scalar_t>() : nullptr,
                               frozen ? gate.const_data_ptr<scalar_t>() : nullptr, v.const_data_ptr<scalar_t>(),
                               dp.defined() ? dp.mutable_data_ptr<scalar_t>() : nullptr,
                               dr.defined() ? dr.mutable_data_ptr<scalar_t>() : nullptr,
                               dv_acc.defined() ? dv_acc.mutable_data_ptr<acc_t>() : nullptr,
                               dwb_acc.defined() ? dwb_acc.mutable_data_ptr<acc_t>() : nullptr, kind, g.size(0),
                               m_y, m_h, zeta);
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

}  // namespace gconv_ee_cpu

TORCH_LIBRARY_FRAGMENT(gconv_cpu, m) {
  m.def("ee_head_fwd(Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, float gate_zeta, "
        "int save) -> (Tensor, Tensor, Tensor)");
  m.def("ee_head_bwd(Tensor grad, Tensor z, Tensor weight, Tensor output_weight, Tensor? gate_weight, "
        "Tensor saved_a, Tensor saved_s, float gate_zeta, int needs) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gconv_cpu, CPU, m) {
  m.impl("ee_head_fwd", &gconv_ee_cpu::ee_head_fwd);
  m.impl("ee_head_bwd", &gconv_ee_cpu::ee_head_bwd);
}
