#!/usr/bin/env bash
# The embedded W2 cases of bench/test_w2.py against two builds of the package, alternated
# ROUNDS times in one session so that both see the same load; prints samples/s of each run's
# median round and the load average. Each tree must hold a built extension (scripts/dev-build).
# Usage: bench/w2_before_after.sh BEFORE_TREE AFTER_TREE [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
before=$(cd "$1" && pwd) after=$(cd "$2" && pwd) rounds=${3:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq "$rounds"); do
  for side in before after; do
    tree=$before; [ "$side" = after ] && tree=$after
    SPARSECORE_BENCH_SCALE=full PYTHONPATH="$tree/python" python3 -m pytest "$root/bench/test_w2.py" -q \
      -p no:cacheprovider -k "(test_w2_adam or test_w2_adagrad) and sparsecore and not cluster" \
      --benchmark-json="$out/$side-$i.json" >/dev/null
    python3 - "$out/$side-$i.json" "$side" "$i" <<'PY'
import json, os, sys
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    samples = b["extra_info"].get("samples_per_round", 25000)
    print(sys.argv[2], sys.argv[3], b["name"], round(samples / b["stats"]["median"]), f"{os.getloadavg()[0]:.2f}")
PY
  done
done
