// gconv._C — C++ CPU kernels.
//
// Each source file in this folder registers its ops itself with
//     TORCH_LIBRARY_FRAGMENT(gconv_cpu, m) { m.def("name(Tensor x, ...) -> Tensor", &fn); }
// so areas never edit a shared binding list; Python reaches them as torch.ops.gconv_cpu.<name>
// after `import gconv._C`. This file only makes the shared object an importable module.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gconv C++ CPU kernels; ops live under torch.ops.gconv_cpu";
}
