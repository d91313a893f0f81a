// gconv._C_cuda — CUDA kernels.
//
// Each source file in this folder registers its ops itself with
//     TORCH_LIBRARY_FRAGMENT(gconv_cuda, m) { m.def("name(Tensor x, ...) -> Tensor", &fn); }
// Python reaches them as torch.ops.gconv_cuda.<name> after `import gconv._C_cuda`.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gconv CUDA kernels; ops live under torch.ops.gconv_cuda";
}
