#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment with only its declared dependencies, and checks
# that the native core loads and analyses a model there.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=$(mktemp -d); env_dir=$(mktemp -d)
python -m pip wheel -q --no-deps -w "$dist" .
python -m venv "$env_dir"
"$env_dir/bin/python" -m pip install -q torch==2.13.0 "$dist"/tempbalance-*.whl
(cd "$env_dir" && "$env_dir/bin/python" - <<'PY'
import torch, tempbalance
assert tempbalance.native_available(), tempbalance._native.unavailable_reason
model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 256))
report = tempbalance.analyze(model, backend="native")
assert all(r.status == "ok" for r in report.rows), report
print("wheel smoke test: native core loaded;", len(report.rows), "layers analysed")
PY
)
rm -rf "$dist" "$env_dir"
