"""Build script for gconv's optional native extensions.

* ``gconv._C``       — C++ CPU kernels (csrc/cpu/*.cpp), built when torch is importable in the
  build environment (``pip install --no-build-isolation .``) and a C++ compiler works.
* ``gconv._C_cuda``  — CUDA kernels (csrc/cuda/*.cu, *.cpp), built only when torch is a CUDA build
  and nvcc is found.

Nothing here is required: a missing compiler, torch or nvcc, or a failed compile, leaves the
package importable, and ``gconv.backends()`` says which implementation each op then uses and why.
Environment switches: ``GCONV_NO_EXT=1`` (build nothing), ``GCONV_NO_CUDA=1`` (skip CUDA),
``GCONV_CUDA_ARCH`` (e.g. ``"9.0"``; defaults to TORCH_CUDA_ARCH_LIST or the visible GPU).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[gconv setup] {msg}", file=sys.stderr)


def _extensions():
    if os.environ.get("GCONV_NO_EXT") == "1":
        _log("GCONV_NO_EXT=1: building no native extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as exc:  # isolated build env without torch
        _log(f"torch is not importable in the build environment ({exc!r}); "
             "building pure Python. Use `pip install --no-build-isolation .` for the C++ kernels.")
        return [], {}

    exts = []
    cxx = ["-O3", "-std=c++17"]
    if sys.platform != "win32":
        cxx += ["-fopenmp"] if os.environ.get("GCONV_NO_OPENMP") != "1" else []
    cpu_src = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpu_src:
        exts.append(ce.CppExtension(
            "gconv._C", cpu_src, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [],
            optional=True))

    cuda_src = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                      glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    want_cuda = os.environ.get("GCONV_NO_CUDA") != "1"
    has_nvcc = ce.CUDA_HOME is not None and shutil.which(os.path.join(ce.CUDA_HOME, "bin", "nvcc")) is not None
    if cuda_src and want_cuda and torch.version.cuda is not None and has_nvcc:
        if os.environ.get("GCONV_CUDA_ARCH"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["GCONV_CUDA_ARCH"]
        exts.append(ce.CUDAExtension(
            "gconv._C_cuda", cuda_src, include_dirs=[os.path.join(ROOT, "csrc")],
            libraries=["cusolver", "cublas"],
            extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                                "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            optional=True))
    elif cuda_src:
        why = ("GCONV_NO_CUDA=1" if not want_cuda else
               "torch is a CPU build" if torch.version.cuda is None else "nvcc not found")
        _log(f"skipping the CUDA extension: {why}")

    class OptionalBuildExtension(ce.BuildExtension):
        """BuildExtension that never fails the install: a failed extension is reported and skipped."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # compiler missing or broken: fall back at run time
                _log(f"could not build {ext.name} ({type(exc).__name__}: {exc}); "
                     "the ops fall back to the next implementation")

    return exts, {"build_ext": OptionalBuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
