"""Builds deconvkernels._C: CPU kernels (one copy per ISA) and, where possible, CUDA kernels.

CUDA sources are compiled whenever nvcc and a CUDA build of torch are found, with or
without a visible GPU; a CPU-only extension otherwise. Switches (environment):

    DECONVKERNELS_FORCE_CUDA=1|0   build the CUDA kernels (fail if impossible) / never
    TORCH_CUDA_ARCH_LIST           CUDA archs; default "8.0;9.0" when no GPU is visible
    CUDA_HOME                      the toolkit; default: found from nvcc on PATH
    MAX_JOBS                       parallel compile jobs (ninja)
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCHS = "8.0;9.0"


def log(msg: str) -> None:
    print(f"deconvkernels: {msg}", file=sys.stderr, flush=True)


def env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def find_cuda_home() -> str | None:
    """The toolkit folder: $CUDA_HOME, else the folder above the real nvcc's bin/.

    nvcc on PATH may be a symlink or a wrapper script; `nvcc --dryrun` prints the real
    location (its TOP variable) in both cases.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    candidates = []
    try:  # a dry run of a compile prints nvcc's own folder as "#$ TOP=..."
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.cu"
            probe.write_text("int main() { return 0; }\n")
            out = subprocess.run(
                [nvcc, "--dryrun", "-c", str(probe), "-o", str(Path(tmp) / "probe.o")],
                capture_output=True, text=True, timeout=120,
            )
        for line in (out.stdout + out.stderr).splitlines():
            m = re.match(r"#\$ TOP=(.*)$", line.strip())
            if m:
                candidates.append(Path(m.group(1)).resolve())
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    for c in candidates:
        if (c / "include" / "cuda_runtime.h").exists():
            return str(c)
    return None


def nvidia_wheel_includes() -> list[str]:
    """include/ folders of the nvidia-* wheels torch depends on (cusparse.h, cublas_v2.h...)."""
    found = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        found += sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
    return [p for p in found if os.path.isdir(p)]


# Decide CUDA before torch.utils.cpp_extension reads CUDA_HOME at import time.
FORCE_CUDA = env_flag("DECONVKERNELS_FORCE_CUDA")
CUDA_HOME = find_cuda_home() if FORCE_CUDA is not False else None
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

TORCH_HAS_CUDA = torch.version.cuda is not None
WITH_CUDA = bool(CUDA_HOME) and TORCH_HAS_CUDA and FORCE_CUDA is not False
if FORCE_CUDA and not WITH_CUDA:
    sys.exit(
        "deconvkernels: DECONVKERNELS_FORCE_CUDA=1 but cannot build CUDA kernels "
        f"(nvcc toolkit: {CUDA_HOME or 'not found'}; torch CUDA: {torch.version.cuda})"
    )
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
# Per-ISA copies of the CPU kernels (files csrc/cpu/isa/*_<isa>.cpp) and their flags.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
        "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
    ],
    # AVX512 plus the bfloat16 dot product (vdpbf16ps): ATen's vectors stay AVX512's.
    "avx512bf16": [
        "-DCPU_CAPABILITY=AVX512_BF16", "-DCPU_CAPABILITY_AVX512", "-DDK_BF16_DOT=1",
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma",
        "-mf16c",
    ],
}


def compiler_accepts(flag: str) -> bool:
    """Whether the C++ compiler takes ``flag`` (an old compiler may lack -mavx512bf16)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        done = subprocess.run([cxx, flag, "-x", "c++", "-fsyntax-only", "-"], input=b"int x;",
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


ISAS = ["default", "avx2", "avx512"] if IS_X86 else ["default"]
if IS_X86 and compiler_accepts("-mavx512bf16"):
    ISAS.append("avx512bf16")
# The kernel families compiled per ISA; the bfloat16-dot level only has the fused op's
# kernels (its pooling is AVX512's: pooling does no multiply-adds).
ISA_KERNELS = {isa: ("pool_kernels", "unpool_deconv_kernels") for isa in ISAS}
if "avx512bf16" in ISA_KERNELS:
    ISA_KERNELS["avx512bf16"] = ("unpool_deconv_kernels",)


# As deconvkernels.build_info() and set_cpu_isa() name them.
ISA_NAMES = {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AVX512",
             "avx512bf16": "AVX512_BF16"}


def isa_of(source: str) -> str | None:
    m = re.search(r"_(default|avx2|avx512|avx512bf16)\.cpp$", source)
    return m.group(1) if m else None


class BuildPerIsa(BuildExtension):
    """BuildExtension that compiles csrc/cpu/isa/*_<isa>.cpp with that ISA's flags.

    torch's ninja build takes one set of flags per extension, so sources are compiled in
    groups: the generic sources (C++ and CUDA) first, then one group per ISA. The baseline
    objects come first in the link, so where an inline function is emitted by several
    groups the linker keeps the baseline copy, which every CPU can run.
    """

    def build_extension(self, ext):  # noqa: D102
        compile_all = self.compiler.compile

        def compile_by_isa(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                           extra_preargs=None, extra_postargs=None, depends=None):
            objects = []
            groups = [[s for s in sources if isa_of(s) is None]] + [
                [s for s in sources if isa_of(s) == isa] for isa in ISAS
            ]
            for group in groups:
                if not group:
                    continue
                isa = isa_of(group[0])
                post = extra_postargs
                if isa is not None:
                    if isinstance(post, dict):
                        post = dict(post, cxx=list(post.get("cxx", [])) + ISA_FLAGS[isa])
                    else:
                        post = list(post or []) + ISA_FLAGS[isa]
                objects += compile_all(group, output_dir, macros, include_dirs, debug,
                                       extra_preargs, post, depends)
            return objects

        self.compiler.compile = compile_by_isa
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_all


def extension():
    sources = [
        "csrc/ops.cpp",
        "csrc/eager_calls.cpp",
        "csrc/pool_autograd.cpp",
        "csrc/pool_args.cpp",
        "csrc/unpool_deconv_args.cpp",
        "csrc/cpu/cpu_isa.cpp",
        "csrc/cpu/pool_cpu.cpp",
        "csrc/cpu/streaming_stores.cpp",
        "csrc/cpu/unpool_deconv_cpu.cpp",
        "csrc/cpu/emulated_ops.cpp",
    ]
    if WITH_CUDA:
        sources += ["csrc/cuda/cuda_ops.cu"]
    sources += [f"csrc/cpu/isa/{kernels}_{isa}.cpp"
                for isa in ISAS for kernels in ISA_KERNELS[isa]]

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""
    defines = {
        "DK_BUILD_CUDA": "1" if WITH_CUDA else "0",
        "DK_CUDA_ARCHS": f'"{archs}"',
        "DK_CUDA_VERSION": f'"{torch.version.cuda or ""}"' if WITH_CUDA else '""',
        "DK_CPU_ISAS": '"' + ";".join(ISA_NAMES[i] for i in ISAS) + '"',
        "DK_TORCH_VERSION": f'"{torch.__version__}"',
    }
    if "avx2" in ISAS:
        defines["DK_HAVE_AVX2"] = "1"
    if "avx512" in ISAS:
        defines["DK_HAVE_AVX512"] = "1"
    if "avx512bf16" in ISAS:
        defines["DK_HAVE_AVX512_BF16"] = "1"
    macros = [f"-D{k}={v}" for k, v in defines.items()]
    # at::parallel_for is header code over OpenMP in torch's builds: without -fopenmp it
    # silently runs on one thread. The link resolves to the libgomp torch already loaded.
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp", *macros]
    kwargs = dict(
        name="deconvkernels._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if WITH_CUDA:
        wheel_includes = nvidia_wheel_includes()
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", *macros]
        for inc in wheel_includes:  # after the toolkit's own -I: only fills what it lacks
            nvcc += ["-isystem", inc]
            cxx += ["-isystem", inc]
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc}
        log(f"building CPU kernels ({', '.join(ISAS)}) and CUDA kernels for archs {archs} "
            f"with the toolkit at {CUDA_HOME} (torch CUDA {torch.version.cuda})")
        return CUDAExtension(**kwargs)
    reason = (
        "DECONVKERNELS_FORCE_CUDA=0" if FORCE_CUDA is False
        else "nvcc not found" if not CUDA_HOME
        else "torch is a CPU-only build"
    )
    log(f"building CPU kernels only ({', '.join(ISAS)}): {reason}")
    return CppExtension(**kwargs)


setup(
    packages=find_packages(include=["deconvkernels", "deconvkernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildPerIsa.with_options(use_ninja=True)},
)
