#!/usr/bin/env bash
# One call on a device lent for a few minutes: print what the image has, install what it lacks from the carried
# wheel folder, measure everything issue 15 asks for (bench/gpu/measure.py), write results.json + results.md,
# then msmtfn-serve under load (bench/serve_load.py: serve_load.json/.txt).
#
#   bash bench/gpu/fetch-wheels.sh                        # here, with internet: -> bench/gpu/wheels/ (<= 60 MiB)
#   bash bench/gpu/run.sh                                 # on the device, carrying bench/gpu/wheels
#   DRY_RUN=1 bash bench/gpu/run.sh                       # CPU, tiny sizes, < 1 minute (tests/test_gpu_bench.py)
#
# OUT: folder for results.json/results.md (default: a new temp folder). BUDGET: seconds for the measurements
# (default 300 on a device, so that install + measurements stay within 6 minutes). PYTHON: interpreter.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t msmtfn-gpu-XXXXXX)}"
mkdir -p "$OUT"
wheels="$root/bench/gpu/wheels"
dry=""
[[ -n "${DRY_RUN:-}" && "${DRY_RUN}" != 0 ]] && dry=1
t0=$(date +%s)

echo "== what this machine has"
"$PY" - <<'PYEOF'
import os, platform, warnings
warnings.simplefilter("ignore")
print(f"python {platform.python_version()} ({os.cpu_count()} CPUs)")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
except Exception as e:
    print(f"torch: not usable ({e})")
for m in ("transformers", "numpy", "scipy", "sklearn", "h5py", "click", "tqdm", "zarr", "numcodecs", "dask",
          "distributed", "soundfile", "soxr", "audiomentations", "matplotlib", "pynvml", "fastapi", "uvicorn"):
    try:
        mod = __import__(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"  {m}: missing ({e.__class__.__name__})")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv

# install only what is missing (the image may have changed since last seen), never from an index
missing=$("$PY" - <<'PYEOF'
import importlib.util as u
mods = {"zarr": "zarr", "numcodecs": "numcodecs", "dask": "dask", "distributed": "distributed",
        "soundfile": "soundfile", "soxr": "soxr", "matplotlib": "matplotlib", "pynvml": "nvidia-ml-py",
        "audiomentations": "audiomentations", "fastapi": "fastapi", "uvicorn": "uvicorn",
        "python_multipart": "python-multipart", "requests": "requests"}
print(" ".join(p for m, p in mods.items() if u.find_spec(m) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
    echo "== installing: $missing"
    if [[ ! -d "$wheels" ]]; then
        echo "run.sh: $wheels is missing; run 'bash bench/gpu/fetch-wheels.sh' on a machine with internet and" \
             "carry bench/gpu/wheels with the device call" >&2
    else
        site="$(mktemp -d -t msmtfn-site-XXXXXX)"
        main=() nodeps=()
        for pkg in $missing; do
            if [[ "$pkg" == audiomentations ]]; then nodeps=($(cat "$wheels/nodeps.txt")); else main+=("$pkg"); fi
        done
        pipi() { "$PY" -m pip install -q --no-index --find-links "$wheels" "$@" 2>>"$site/err"; }
        try_install() {   # site-packages, else the user site, else a private folder put on PYTHONPATH
            if [[ -n "$dry" ]]; then pipi --target "$site" "$@"; return; fi   # a dry run leaves this machine as it is
            pipi "$@" || pipi --user "$@" || pipi --target "$site" "$@"
        }
        if (( ${#main[@]} )) && ! try_install "${main[@]}"; then
            # e.g. an image whose numpy is older than a wheel needs: install the wheels alone, next to it
            not_here=$(cd "$wheels" && ls *.whl | "$PY" -c '
import sys, importlib.metadata as m
for w in sys.stdin.read().split():
    try:
        m.distribution(w.split("-")[0])
    except m.PackageNotFoundError:
        print(w.split("-")[0].replace("_", "-"))')
            pipi --target "$site" --no-deps $not_here || { echo "  could not install ${main[*]}:"; tail -5 "$site/err"; }
        fi
        if (( ${#nodeps[@]} )); then
            try_install --no-deps "${nodeps[@]}" || { echo "  could not install audiomentations:"; tail -3 "$site/err"; }
        fi
        [[ -n "$(ls -A "$site" | grep -v '^err$')" ]] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
echo "== install done in $(( $(date +%s) - t0 )) s"

# the project from this checkout (no install needed: no build step, no console scripts used)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
args=(--out "$OUT")
if [[ -n "$dry" ]]; then
    args+=(--dry-run)
    budget="${BUDGET:-150}"
else
    budget="${BUDGET:-300}"
fi
# the driver saves results after every part; the hard limit leaves it 25 s past its budget
timeout --signal=INT --kill-after=10 $(( ${budget%.*} + 25 )) "$PY" "$root/bench/gpu/measure.py" "${args[@]}" \
    --budget "$budget"
rc=$?

# msmtfn-serve under load (bench/serve_load.py): a part of its own, after the others, with its own bound
echo "== serve load"
if [[ -n "$dry" ]]; then
    serve_args=(--device cpu --encoders tiny --seconds 5 --requests 2 --clients 1,2 --threads 1)
else
    serve_args=(--device cuda --encoders base --seconds 120 --requests 64)
fi
timeout --signal=INT --kill-after=10 "${SERVE_BUDGET:-120}" "$PY" "$root/bench/serve_load.py" \
    "${serve_args[@]}" --json "$OUT/serve_load.json" 2>"$OUT/serve_load.err" | tee "$OUT/serve_load.txt"
src=${PIPESTATUS[0]}
(( src == 0 )) || { echo "serve load: rc $src"; tail -5 "$OUT/serve_load.err"; rc=$(( rc ? rc : src )); }
echo "== results in $OUT (results.json, results.md); rc $rc; $(( $(date +%s) - t0 )) s in all"
exit $rc
