#!/usr/bin/env bash
# Prepare one run of `python -m bench.gpu_bench` on an offline H100/H200 host whose Python (3.12) has PyTorch, numpy,
# Pillow, OpenCV, uvloop and prometheus-client but no onnxruntime-gpu, no serving stack and no package index, and to
# which at most 64 MiB can be sent: the working tree and the bundle together.
#
#   bash bench/gpu_host.sh bundle    # .gpu/: the shared kit's onnxruntime-gpu (sm_90) + every serving wheel the
#                                    # host lacks, repacked into one xz archive; reuses a kit bundle already built
#   bash bench/gpu_host.sh slim      # commit-free view of the tree without what a benchmark run never reads
#                                    # (tests, docs, clients, docker files, the embedded model), then its size
#   bash bench/gpu_host.sh restore   # back to the branch `slim` left
#   bash bench/gpu_host.sh size      # bytes that would be sent: tracked + untracked-not-ignored files + .gpu
#
# On the host, from the project root with .gpu/ beside it:
#   source .gpu/setup.sh && python3 -m bench.gpu_bench --out $OUT --json $OUT/gpu_bench.json ...
#
# Why each step: the kit alone is 62.9 MB (its onnxruntime CUDA library is 50.7 MB even at xz -9e; other xz filters
# measured no smaller), and the five serving packages the host lacks (simplejpeg, zlib-ng, shapely, cachetools,
# fastapi-offline) add 3.7 MB more as wheels (nvidia-ml-py and python-json-logger, pure Python, tens of KB). Wheels are deflate-compressed
# zips; stored uncompressed inside one xz archive all fourteen take 5.4 MB instead of 7.7. That still leaves the full
# tree (4.2 MB) over the limit, so `slim` sends a tree without the parts a benchmark run never reads.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
LIMIT=$((64 * 1024 * 1024))
# The serving packages the GPU host's image lacks besides the kit's own list, at the versions the tests run with,
# and NVML's binding at the GPU image's version (docker/Dockerfile.gpu): without it the run has no bucket memory
# in /readyz and no segment_gpu_* metrics (`service.core.nvml` reads nothing), which the `pow2` variant compares.
EXTRA_WHEELS=${GPU_EXTRA_WHEELS:-"simplejpeg==1.9.0 zlib-ng==1.1.0 shapely==2.2.0 cachetools==8.0.2 fastapi-offline==1.7.7
 nvidia-ml-py==13.580.126 python-json-logger==4.2.0"}
# What a benchmark run never reads (tests, user docs, clients, container files, the embedded model).
SLIM_DROP=(tests docs clients docker models service/models/default.onnx)
RETURN=.git/gpu-host-return
UNPACK_MARK="# unpacks the carried wheels (bench/gpu_host.sh)"

travel_size() {  # what a call would send: tracked and untracked-not-ignored files, plus .gpu
  { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null
    find .gpu -type f -exec stat -c %s {} + 2>/dev/null; } | awk '{s += $1} END {print s + 0}'
}

report_size() {
  local size; size=$(travel_size)
  echo "would send $size bytes of $LIMIT ($(( (LIMIT - size) / 1024 )) KiB to spare)"
  [ "$size" -le "$LIMIT" ] || { echo "over the limit: run 'bash bench/gpu_host.sh slim' first" >&2; return 1; }
}

bundle() {
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  if [ ! -s .gpu/cuda90.so.xz ] || [ ! -s .gpu/pybind.so.xz ] || [ ! -s .gpu/ort-py.tar.xz ]; then
    bash ../shared/gpu/build-bundle.sh
  fi
  mkdir -p .gpu/whl
  # A rerun adds to what an earlier one packed (the kit's wheels are only in the archive by then).
  [ ! -s .gpu/wheels.tar.xz ] || tar -xJf .gpu/wheels.tar.xz -C .gpu/whl
  # The pinned wheels are fetched afresh: a pin changed since the last run would otherwise leave both versions in
  # the archive, and pip refuses to install two versions of one project, so the host's setup would fail.
  python3 - .gpu/whl $EXTRA_WHEELS <<'EOF'
import re, sys
from pathlib import Path
def project(name: str) -> str:  # the normalised project name (PEP 503), of a requirement or a wheel file
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~\[; ]", name, maxsplit=1)[0]).lower()
pinned = {project(spec) for spec in sys.argv[2:]}
for wheel in Path(sys.argv[1]).glob("*.whl"):
    if project(wheel.name.split("-")[0]) in pinned:
        wheel.unlink()
EOF
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .gpu/whl $EXTRA_WHEELS
  if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    local stored; stored=$(mktemp -d)
    # Stored (uncompressed) zips: xz then compresses their contents across all the wheels at once.
    python3 - "$stored" .gpu/whl/*.whl <<'EOF'
import sys, zipfile
from pathlib import Path
out = Path(sys.argv[1])
for wheel in map(Path, sys.argv[2:]):
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out / wheel.name, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)
EOF
    tar -C "$stored" -cf - . | xz -T0 -9e > .gpu/wheels.tar.xz
    rm -rf "$stored" .gpu/whl
  fi
  [ -s .gpu/wheels.tar.xz ] || { echo "no wheels in .gpu: rebuild with ../shared/gpu/build-bundle.sh" >&2; exit 1; }
  cat > .gpu/setup.sh <<'EOF'
# Source on the GPU host from the project root: unpack the wheels, then the kit's setup (onnxruntime-gpu + wheels).
mkdir -p .gpu/whl && tar -xJf .gpu/wheels.tar.xz -C .gpu/whl || return 1
source .gpu/device-setup.sh || return 1
python3 -m bench.gpu_bench --check-imports || return 1
EOF
  # The kit's own instructions begin a device command with `source .gpu/device-setup.sh`, which installs
  # .gpu/whl/*.whl: the wheels are only in the archive now, so it unpacks them first when they are not there.
  if [ -f .gpu/device-setup.sh ] && ! grep -q "$UNPACK_MARK" .gpu/device-setup.sh; then
    { echo "[ -d .gpu/whl ] || { mkdir -p .gpu/whl && tar -xJf .gpu/wheels.tar.xz -C .gpu/whl; } || return 1  $UNPACK_MARK"
      cat .gpu/device-setup.sh; } > .gpu/device-setup.sh.new && mv .gpu/device-setup.sh.new .gpu/device-setup.sh
  fi
  echo ".gpu: $(du -sb .gpu | cut -f1) bytes"
  report_size || true
}

slim() {
  [ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "commit or stash your changes first" >&2; exit 1; }
  [ ! -e "$RETURN" ] || { echo "already slim; 'restore' first" >&2; exit 1; }
  git symbolic-ref -q --short HEAD > "$RETURN" || git rev-parse HEAD > "$RETURN"
  git switch -q --detach
  git rm -rq --ignore-unmatch -- "${SLIM_DROP[@]}"
  git -c user.name=gpu-host -c user.email=gpu-host@localhost commit -qm "slim tree for a GPU host run" --no-verify
  report_size
}

restore() {
  [ -e "$RETURN" ] || { echo "not slim" >&2; exit 1; }
  local ref; ref=$(cat "$RETURN")
  { git switch -q "$ref" 2>/dev/null || git switch -q --detach "$ref"; } && rm -f "$RETURN"
  git log --oneline -1
}

case "${1:-}" in
  bundle) bundle ;;
  slim) slim ;;
  restore) restore ;;
  size) report_size ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
