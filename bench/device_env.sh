# Source on a GPU machine that lacks diffusers/webdataset/kornia/gsplat: installs the wheels carried in .whl/
# (see README "GPU machines without internet") into /tmp/site and puts it and the checkout on PYTHONPATH.
# gsplat's CUDA kernels: when .carry/gsplat_cuda.so exists (the library a previous call on the same machine kind
# built, copied back from $OUT), gsplat imports it instead of compiling for ~90 s; otherwise gsplat compiles into
# /tmp/torch_extensions/gsplat_cuda/gsplat_cuda.so, which a script can copy to $OUT for the next call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
export PATH=/tmp/site/bin:$PATH
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
if [ -f .carry/gsplat_cuda.so ]; then  # gsplat tries `from gsplat import csrc` before compiling: give it one
  cat > /tmp/site/gsplat/csrc.py <<PY
import importlib.util as _u
import torch  # noqa: F401  (the library links against torch's)
try:
    _spec = _u.spec_from_file_location("gsplat_cuda", "$PWD/.carry/gsplat_cuda.so")
    _lib = _u.module_from_spec(_spec)
    _spec.loader.exec_module(_lib)
except Exception as e:  # another torch or CUDA than the one it was built for: gsplat compiles instead
    raise ImportError(f"carried gsplat_cuda.so not loadable: {e}") from e
globals().update({k: v for k, v in vars(_lib).items() if not k.startswith("__")})
PY
fi
