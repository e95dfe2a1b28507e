#!/usr/bin/env bash
# Mutation testing of train/ and pipeline/labels.py with mutmut 3 (configuration: [tool.mutmut] in
# pyproject.toml). Not part of CI: about an hour on 2 cores. Results: docs/testing.md.
#   bash bench/mutation.sh            # run (resumes where a previous run stopped)
#   bash bench/mutation.sh 'train.metrics*' 'train.normalise*'   # some modules' mutants only
#   mutmut results                    # the survivors; `mutmut show NAME` shows one
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "mutmut>=3.8,<4"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
mutmut results
