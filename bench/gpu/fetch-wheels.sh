#!/usr/bin/env bash
# Download, on a machine with internet, the wheels that bench/gpu/run.sh installs on the device (which has none):
# cp312 manylinux x86_64 wheels of exactly what the project imports and the device image lacks (last seen:
# Python 3.12, torch, transformers, numpy, scipy, scikit-learn, h5py, click, tqdm; no zarr, numcodecs, dask,
# distributed, soundfile, soxr, audiomentations, matplotlib), at the versions this checkout is tested with.
# Their non-torch dependencies come along, except numpy, scipy and scikit-learn (big, and on the image).
# audiomentations (only `msmtfn-extract --augment` imports it) comes without librosa's numba/llvmlite (40 MiB,
# needed only by librosa transforms msmtfn does not use). The folder is git-ignored and must stay <= 60 MiB:
# it travels with the device call.
#
#   bash bench/gpu/fetch-wheels.sh          # -> bench/gpu/wheels/ (WHEELS=folder to change)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${WHEELS:-$here/wheels}"
limit_mib=60
# with their dependencies: what pipeline/, extract/ and train/ import, + pynvml for torch.cuda.utilization,
# + what msmtfn-serve and its load benchmark need
main=(zarr numcodecs dask distributed soundfile soxr matplotlib nvidia-ml-py fastapi uvicorn python-multipart requests)
# without dependencies: audiomentations and the part of its dependency tree that importing it needs
nodeps=(audiomentations numpy-minmax numpy-rms python-stretch librosa lazy_loader audioread decorator pooch
        platformdirs standard-aifc standard-sunau audioop-lts)
on_image=(numpy scipy scikit_learn joblib threadpoolctl)

pin() {   # the version installed here (what the tests ran with), else the newest
    local v
    v=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null) \
        && echo "$1==$v" || echo "$1"
}
dl() {
    python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -d "$dest" "$@"
}
rm -rf "$dest"
mkdir -p "$dest"
dl $(for p in "${main[@]}"; do pin "$p"; done)
got=()
for p in "${nodeps[@]}"; do   # one at a time: a backport that has no cp312 wheel is simply not needed there
    if dl --no-deps "$(pin "$p")" 2>/dev/null; then got+=("$p"); else echo "  (no cp312 wheel of $p: not needed on 3.12)"; fi
done
for p in "${on_image[@]}"; do
    rm -f "$dest/$p"-[0-9]*.whl
done
printf '%s\n' "${main[@]}" > "$dest/main.txt"
printf '%s\n' "${got[@]}" > "$dest/nodeps.txt"
size_mib=$(( $(du -sk "$dest" | cut -f1) / 1024 ))
echo "$(ls "$dest"/*.whl | wc -l) wheels, ${size_mib} MiB in $dest"
if (( size_mib > limit_mib )); then
    echo "fetch-wheels: $dest is ${size_mib} MiB, over the ${limit_mib} MiB a device call carries; drop a package" >&2
    exit 1
fi
