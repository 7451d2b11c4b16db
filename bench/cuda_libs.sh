# Sourced by the GPU scripts: the driver, NVRTC and cuBLAS under the names cudarc looks for, and
# their folders on LD_LIBRARY_PATH (found among the usual places and PyTorch's wheels).
#
#   . bench/cuda_libs.sh OUT     (writes OUT/libs.txt)
libs=/tmp/armature-cudalibs
mkdir -p $libs
dirs=""
for name in libcuda libnvrtc libcublas libcublasLt; do
  f=$(find /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia /usr/local/cuda/ /usr/local/cuda*/targets \
        /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null \
        -name "$name.so*" ! -path "*stubs*" ! -name "*alt*" ! -name "*builtins*" | sort -V | tail -1)
  if [ -n "$f" ]; then
    ln -sf "$f" "$libs/$name.so"
    dirs="$dirs:$(dirname "$f")"
  fi
  echo "$name: ${f:-not found}"
done | tee "$1/libs.txt"
for f in $libs/*.so; do dirs="$dirs:$(dirname "$(readlink -f "$f")")"; done
export LD_LIBRARY_PATH="$libs$dirs:${LD_LIBRARY_PATH:-}"
