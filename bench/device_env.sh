# Source on a GPU machine that lacks diffusers/webdataset/kornia/gsplat: installs the wheels carried in .whl/
# (see README "GPU machines without internet") into /tmp/site and puts it and the checkout on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
export PATH=/tmp/site/bin:$PATH
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
