#!/usr/bin/env bash
# Cross-compile the CPU kernels' instruction-set-specific sources for ARM Linux, ARM macOS and Intel
# macOS (no such machine here) with zig's bundled clang, and check that the 128-bit build became NEON code
# (vector fused multiply-adds). Compile only: nothing runs. A change that breaks the ARM or Apple
# clang build of those files cannot land.
#   env: PYTHON (python3). Installs the `ziglang` wheel (a CI tool, not a natfast dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q ziglang
work=$(mktemp -d "${TMPDIR:-/tmp}/natfast-cross.XXXXXX")
trap 'rm -rf "$work"' EXIT
sources="csrc/cpu/kernels_vec128.cpp csrc/cpu/kernels_portable.cpp csrc/cpu/kernels_avx2.cpp csrc/cpu/cpu_features.cpp"
# x86_64-macos: clang's route to the AVX2 build (`#pragma clang attribute`), which GCC never takes.
for target in aarch64-linux-gnu aarch64-macos x86_64-macos; do
  for src in $sources; do
    obj="$work/$target-$(basename "$src" .cpp).o"
    # (These files include no torch header.)
    "$PYTHON" -m ziglang c++ -target "$target" -std=c++17 -O2 -c "$src" -o "$obj" -Icsrc ||
      { echo "cross_compile_check: $src does not compile for $target" >&2; exit 1; }
  done
  [ "${target%%-*}" = aarch64 ] || continue
  # NEON's fmla on 4-float vectors: the generic vectors were not lowered to scalar code.
  "$PYTHON" - "$work/$target-kernels_vec128.o" "$target" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
# AArch64 FMLA (vector, single precision, 4S): 0x4e20cc00 with Rm, Rn, Rd fields masked out.
words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data) - 3, 4)]
count = sum((w & 0xffe0fc00) == 0x4e20cc00 for w in words)
print(f"cross_compile_check: {sys.argv[2]}: kernels_vec128 has {count} 4-float vector FMAs")
sys.exit(0 if count >= 50 else 1)
PY
done
echo "cross_compile_check: OK (aarch64-linux-gnu, aarch64-macos, x86_64-macos)"
