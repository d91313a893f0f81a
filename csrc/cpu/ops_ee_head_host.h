// Host-side plan of the EE head (seed 000, eq. 3.4), shared by the CPU (ops_ee_head.cpp) and CUDA
// (../cuda/ops_ee_head.cu) implementations. Only the fused epilogues differ per device (`Epi`).
//
// With N = m_y·m_H, a = z̃Wᵀ, r = z̃Rᵀ (r = a self-gated), s = sigmoid(ζ′r) and df (B, m_y):
//   forward   f[b,j] = Σ_k V[j,k]·s·a                         (GEMM into a row chunk, then Epi::fwd)
//   backward  dP = df·V·(s + ζ′·a·s(1−s)) self-gated, dP = df·V·s and dr = df·V·a·ζ′·s(1−s) frozen;
//             dW = dPᵀ z̃ (bias column = Σ_b dP), dz = dP·W[:, :m] (+ dr·R[:, :m]), dV = Σ_b df·s·a
// The constant neuron is never materialised: W[:, :m] is a strided view, W[:, m] a bias vector.
// Epi::fwd(a, r, bias_w, bias_r, v, m_y, m_H, ζ′, f, s_out, write_a) gets the bias-free GEMM results
// (r undefined when self-gated), adds the constant neuron's weights, and writes a back if asked;
// Epi::bwd(g, a, gate, frozen, gate_is_s, v, m_y, m_H, ζ′, dP, dr, dV_acc, dWbias_acc) writes dP / dr
// and adds the column sums Σ_b df·s·a and Σ_b dP into the accumulators (each may be undefined).
// Rows are processed in chunks of at most Epi::chunk_elems() / N rows, so the B×N intermediates
// exist only as one bounded chunk at a time unless the caller asked to save them for backward.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

namespace gconv_ee {

constexpr int64_t kSaveA = 1, kSaveS = 2;               // forward: what to keep for backward
constexpr int64_t kNeedZ = 1, kNeedW = 2, kNeedV = 4;   // backward: which gradients

struct Dims {
  int64_t B, m, m_y, m_h, N;
};

inline Dims check_inputs(const char* ns, const at::Tensor& z, const at::Tensor& w, const at::Tensor& v,
                         const c10::optional<at::Tensor>& r) {
  TORCH_CHECK(z.dim() == 2, ns, ".ee_head: z must be 2-D (batch, in_features), got ", z.sizes());
  TORCH_CHECK(w.dim() == 3, ns, ".ee_head: weight must be 3-D (m_y, m_H, in_features + 1), got ", w.sizes());
  TORCH_CHECK(w.size(2) == z.size(1) + 1, ns, ".ee_head: z has ", z.size(1), " features but weight ",
              w.sizes(), " expects ", w.size(2) - 1);
  TORCH_CHECK(v.dim() == 2 && v.size(0) == w.size(0) && v.size(1) == w.size(1), ns,
              ".ee_head: output_weight must have shape (m_y, m_H) = (", w.size(0), ", ", w.size(1), "), got ",
              v.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), ns, ".ee_head: z must be floating point, got ", z.scalar_type());
  TORCH_CHECK(w.scalar_type() == z.scalar_type() && v.scalar_type() == z.scalar_type(), ns,
              ".ee_head: z, weight and output_weight must share a dtype, got ", z.scalar_type(), ", ",
              w.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(w.device() == z.device() && v.device() == z.device(), ns,
              ".ee_head: z, weight and output_weight must be on one device");
  TORCH_CHECK(w.is_contiguous() && v.is_contiguous(), ns, ".ee_head: weight and output_weight must be contiguous");
  if (r.has_value()) {
    TORCH_CHECK(r->sizes() == w.sizes(), ns, ".ee_head: gate_weight must have the shape of weight ", w.sizes(),
                ", got ", r->sizes());
    TORCH_CHECK(r->scalar_type() == z.scalar_type() && r->device() == z.device(), ns,
                ".ee_head: gate_weight must match z in dtype and device");
    TORCH_CHECK(r->is_contiguous(), ns, ".ee_head: gate_weight must be contiguous");
  }
  return {z.size(0), z.size(1), w.size(0), w.size(1), w.size(0) * w.size(1)};
}

inline int64_t chunk_rows(int64_t B, int64_t N, int64_t elems) {
  return std::max<int64_t>(1, std::min<int64_t>(B, elems / std::max<int64_t>(N, 1)));
}

// (m_y, m_H, m+1) → W[:, :m] as an (N, m) view with leading dimension m+1, and the bias W[:, m].
inline std::pair<at::Tensor, at::Tensor> split_bias(const at::Tensor& w, int64_t N, int64_t m) {
  at::Tensor wf = w.view({N, m + 1});
  return {wf.narrow(1, 0, m), wf.select(1, m)};
}

template <class Epi>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& v,
                                                       const c10::optional<at::Tensor>& r, double zeta,
                                                       int64_t save) {
  const Dims d = check_inputs(Epi::ns(), z, w, v, r);
  const bool frozen = r.has_value();
  const auto opts = z.options();
  at::Tensor out = at::empty({d.B, d.m_y}, opts);
  at::Tensor a_saved = (save & kSaveA) ? at::empty({d.B, d.N}, opts) : at::empty({0}, opts);
  at::Tensor s_saved = (save & kSaveS) ? at::empty({d.B, d.N}, opts) : at::empty({0}, opts);
  if (d.B == 0) return {out, a_saved, s_saved};
  auto [wz, wb] = split_bias(w, d.N, d.m);
  at::Tensor rz, rb;
  if (frozen) std::tie(rz, rb) = split_bias(*r, d.N, d.m);
  const at::Tensor wbc = wb.contiguous(), rbc = frozen ? rb.contiguous() : at::Tensor();
  const int64_t rows = (save & kSaveA) && !frozen ? d.B : chunk_rows(d.B, d.N, Epi::chunk_elems());
  at::Tensor abuf = (save & kSaveA) ? at::Tensor() : at::empty({rows, d.N}, opts);
  at::Tensor rbuf = frozen ? at::empty({rows, d.N}, opts) : at::Tensor();
  for (int64_t b0 = 0; b0 < d.B; b0 += rows) {
    const int64_t rc = std::min(rows, d.B - b0);
    const at::Tensor zc = z.narrow(0, b0, rc);
    // GEMMs without the bias: the constant neuron's column is added in the epilogue (no broadcast copy)
    at::Tensor ac = (save & kSaveA) ? a_saved.narrow(0, b0, rc) : abuf.narrow(0, 0, rc);
    at::mm_out(ac, zc, wz.t());
    at::Tensor gc;
    if (frozen) {
      gc = rbuf.narrow(0, 0, rc);
      at::mm_out(gc, zc, rz.t());
    }
    at::Tensor sc = (save & kSaveS) ? s_saved.narrow(0, b0, rc) : at::Tensor();
    Epi::fwd(ac, gc, wbc, rbc, v, d.m_y, d.m_h, zeta, out.narrow(0, b0, rc), sc, (save & kSaveA) != 0);
  }
  return {out, a_saved, s_saved};
}

template <class Epi>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& g_in, const at::Tensor& z,
                                                        const at::Tensor& w, const at::Tensor& v,
                                                        const c10::optional<at::Tensor>& r,
                                                        const at::Tensor& a_saved, const at::Tensor& s_saved,
                                                        double zeta, int64_t needs) {
  const Dims d = check_inputs(Epi::ns(), z, w, v, r);
  TORCH_CHECK(g_in.dim() == 2 && g_in.size(0) == d.B && g_in.size(1) == d.m_y, Epi::ns(),
              ".ee_head_bwd: grad must have shape (", d.B, ", ", d.m_y, "), got ", g_in.sizes());
  const at::Tensor g = g_in.to(z.scalar_type()).contiguous();
  const bool frozen = r.has_value();
  const bool need_dp = needs & (kNeedZ | kNeedW);
  const bool need_dr = frozen && (needs & kNeedZ);
  const bool need_dv = needs & kNeedV;
  const bool need_a = !frozen || need_dr || need_dv;
  const bool have_a = a_saved.numel() > 0, have_s = s_saved.numel() > 0;
  if (have_a) TORCH_CHECK(a_saved.sizes() == at::IntArrayRef({d.B, d.N}) && a_saved.is_contiguous(), Epi::ns(), ".ee_head_bwd: bad saved a");
  if (have_s) TORCH_CHECK(s_saved.sizes() == at::IntArrayRef({d.B, d.N}) && s_saved.is_contiguous(), Epi::ns(), ".ee_head_bwd: bad saved s");
  const auto opts = z.options();
  const auto acc_type = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dz = (needs & kNeedZ) ? at::empty({d.B, d.m}, opts) : at::empty({0}, opts);
  at::Tensor dw = (needs & kNeedW) ? at::empty({d.N, d.m + 1}, opts) : at::empty({0}, opts);
  at::Tensor dv_acc = need_dv ? at::zeros({d.N}, opts.dtype(acc_type)) : at::Tensor();
  // dW: the GEMM part accumulates over row chunks in a contiguous (N, m) buffer; the bias column
  // (Σ_b dP) is summed by the epilogue
  at::Tensor dwz_acc = (needs & kNeedW) ? at::empty({d.N, d.m}, opts) : at::Tensor();
  at::Tensor dwb_acc = (needs & kNeedW) ? at::zeros({d.N}, opts.dtype(acc_type)) : at::Tensor();
  if (d.B == 0 || !(need_dp || need_dv)) {
    if (needs & kNeedW) dw.zero_();
    return {dz, (needs & kNeedW) ? dw.view(w.sizes()) : dw,
            need_dv ? dv_acc.to(v.scalar_type()).view(v.sizes()) : at::empty({0}, opts)};
  }
  auto [wz, wb] = split_bias(w, d.N, d.m);
  at::Tensor rz, rb;
  if (frozen) std::tie(rz, rb) = split_bias(*r, d.N, d.m);
  const int64_t rows = chunk_rows(d.B, d.N, Epi::chunk_elems());
  at::Tensor abuf = need_a && !have_a ? at::empty({rows, d.N}, opts) : at::Tensor();
  at::Tensor rbuf = frozen && !have_s ? at::empty({rows, d.N}, opts) : at::Tensor();
  at::Tensor dpbuf = need_dp ? at::empty({rows, d.N}, opts) : at::Tensor();
  at::Tensor drbuf = need_dr ? at::empty({rows, d.N}, opts) : at::Tensor();
  for (int64_t b0 = 0; b0 < d.B; b0 += rows) {
    const int64_t rc = std::min(rows, d.B - b0);
    const at::Tensor zc = z.narrow(0, b0, rc), gc = g.narrow(0, b0, rc);
    at::Tensor ac;
    if (need_a) {
      if (have_a) {
        ac = a_saved.narrow(0, b0, rc);
      } else {
        ac = abuf.narrow(0, 0, rc);
        at::addmm_out(ac, wb, zc, wz.t());
      }
    }
    at::Tensor gate = ac;
    bool gate_is_s = false;
    if (frozen) {
      if (have_s) {
        gate = s_saved.narrow(0, b0, rc);
        gate_is_s = true;
      } else {
        gate = rbuf.narrow(0, 0, rc);
        at::addmm_out(gate, rb, zc, rz.t());
      }
    }
    at::Tensor dpc = need_dp ? dpbuf.narrow(0, 0, rc) : at::Tensor();
    at::Tensor drc = need_dr ? drbuf.narrow(0, 0, rc) : at::Tensor();
    Epi::bwd(gc, ac, gate, frozen, gate_is_s, v, d.m_y, d.m_h, zeta, dpc, drc, dv_acc, dwb_acc);
    if (needs & kNeedW) {
      if (b0 == 0) {
        at::mm_out(dwz_acc, dpc.t(), zc);
      } else {
        dwz_acc.addmm_(dpc.t(), zc);
      }
    }
    if (needs & kNeedZ) {
      at::Tensor dzc = dz.narrow(0, b0, rc);
      at::mm_out(dzc, dpc, wz);
      if (need_dr) dzc.addmm_(drc, rz);
    }
  }
  if (needs & kNeedW) {
    dw.narrow(1, 0, d.m).copy_(dwz_acc);
    dw.select(1, d.m).copy_(dwb_acc);
  }
  return {dz, (needs & kNeedW) ? dw.view(w.sizes()) : dw,
          need_dv ? dv_acc.to(v.scalar_type()).view(v.sizes()) : at::empty({0}, opts)};
}

}  // namespace gconv_ee
