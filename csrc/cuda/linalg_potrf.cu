// gconv.linalg: in-place Cholesky factorisation of an n x n float64 matrix on the GPU (cuSOLVER).
//
// torch.linalg.cholesky allocates a second n x n output; at n = 60,000 that is another 28.8 GB.
// This op factors the (row-major, contiguous) matrix where it lies, through the 64-bit cuSOLVER API
// (cusolverDnXpotrf: n * n beyond 2^31 elements is fine).  Row-major lower == column-major upper, so
// lower=true asks cuSOLVER for the upper factor of the column-major view.  Returns LAPACK's info:
// 0 on success, k > 0 when the leading minor of order k is not positive definite.
//
// gconv does not trust this factorisation for its certificate: the residual L Lᵀ − Ã is bounded
// afterwards with conventional GEMMs (gconv/linalg/gpu.py), so the proof does not depend on how
// cuSOLVER organises its computation.  Kept in its own file: it needs the cuSOLVER headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

void check(cusolverStatus_t s, const char* what) {
  TORCH_CHECK(s == CUSOLVER_STATUS_SUCCESS, "gconv_cuda::linalg_potrf_inplace: ", what,
              " failed with cuSOLVER status ", static_cast<int>(s));
}

cusolverDnHandle_t handle_for(int device) {
  static std::mutex mu;
  static std::unordered_map<int, cusolverDnHandle_t> handles;
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cusolverDnHandle_t h = nullptr;
  check(cusolverDnCreate(&h), "cusolverDnCreate");
  handles.emplace(device, h);
  return h;
}

int64_t linalg_potrf_inplace(at::Tensor A, bool lower) {
  TORCH_CHECK(A.is_cuda(), "linalg_potrf_inplace: A must be a CUDA tensor");
  TORCH_CHECK(A.scalar_type() == at::kDouble, "linalg_potrf_inplace: A must be float64, got ", A.scalar_type());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == A.size(1), "linalg_potrf_inplace: A must be square, got ",
              A.sizes());
  TORCH_CHECK(A.is_contiguous(), "linalg_potrf_inplace: A must be contiguous (row-major)");
  const int64_t n = A.size(0);
  if (n == 0) return 0;
  c10::cuda::CUDAGuard guard(A.device());
  cusolverDnHandle_t h = handle_for(A.get_device());
  check(cusolverDnSetStream(h, c10::cuda::getCurrentCUDAStream().stream()), "cusolverDnSetStream");
  cusolverDnParams_t params = nullptr;
  check(cusolverDnCreateParams(&params), "cusolverDnCreateParams");
  const cublasFillMode_t uplo = lower ? CUBLAS_FILL_MODE_UPPER : CUBLAS_FILL_MODE_LOWER;
  size_t dev_bytes = 0, host_bytes = 0;
  check(cusolverDnXpotrf_bufferSize(h, params, uplo, n, CUDA_R_64F, A.data_ptr(), n, CUDA_R_64F, &dev_bytes,
                                    &host_bytes),
        "cusolverDnXpotrf_bufferSize");
  auto work = at::empty({static_cast<int64_t>(dev_bytes > 0 ? dev_bytes : 1)}, A.options().dtype(at::kByte));
  std::vector<char> host_work(host_bytes > 0 ? host_bytes : 1);
  auto info = at::zeros({1}, A.options().dtype(at::kInt));
  cusolverStatus_t st = cusolverDnXpotrf(h, params, uplo, n, CUDA_R_64F, A.data_ptr(), n, CUDA_R_64F,
                                         work.data_ptr(), dev_bytes, host_work.data(), host_bytes,
                                         info.data_ptr<int>());
  cusolverDnDestroyParams(params);
  check(st, "cusolverDnXpotrf");
  return static_cast<int64_t>(info.item<int>());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gconv_cuda, m) {
  m.def("linalg_potrf_inplace(Tensor(a!) A, bool lower) -> int");
}

TORCH_LIBRARY_IMPL(gconv_cuda, CUDA, m) {
  m.impl("linalg_potrf_inplace", &linalg_potrf_inplace);
}
