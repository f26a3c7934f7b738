#!/usr/bin/env bash
# Build the bench venv (benchmarks/.bench-venv) holding the scanners users pick today, pinned to the
# versions the results in benchmarks/README.md were measured with, plus trainguard itself (editable).
#
# The scanners live in their own venv so that their pins (modelaudit wants numpy 2.4.x, modelscan
# rich<15, ...) never touch the project venv, and so that each tool runs the way a user installs it.
#
# Extras: each tool gets the small optional readers for the formats of the corpus (h5py, onnx,
# safetensors, py7zr, scikit-learn/joblib), so that none is scored down for a missing reader.
# torch 2.13.0 CPU is installed: modelaudit needs it (without torch importable it cannot prove that
# torch's rebuild functions are inert and flags every plain torch.save state_dict as a warning),
# and fickling's model-file routine (fickling.polyglot) imports it.
# Not installed: TensorFlow (modelscan's and modelaudit's `tensorflow` extras). modelscan imports
# without it and then skips SavedModel files (its h5 Lambda check needs only h5py); the TF CPU
# wheel is well over the ~600 MB the bench allows.
#
# Usage: bash benchmarks/setup_bench_env.sh   (re-running it is cheap: pip sees what is there)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.bench-venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install --upgrade pip

"${pip[@]}" install \
  "picklescan[7z]==1.0.5" \
  "modelaudit[h5,onnx,safetensors,sevenzip,joblib]==0.2.54" \
  "fickling[archive]==0.1.12" \
  "modelscan[h5py]==0.8.8" \
  "torch==2.13.0" \
  numpy

# trainguard as users install it: a regular (not editable) install, so its bytecode is compiled at
# install time like every other tool's here (this sandbox sets PYTHONDONTWRITEBYTECODE=1, under
# which an editable install recompiles every module on every run). Re-run this script after
# changing src/. The 7z extra matches picklescan[7z] and modelaudit[sevenzip].
"${pip[@]}" install --force-reinstall --no-deps "$root"
"${pip[@]}" install "$root[7z]"

# Print what was installed, so a results file can be matched to the environment.
"$venv/bin/python" - <<'EOF'
from importlib.metadata import version
for name in ("picklescan", "modelaudit", "fickling", "modelscan", "trainguard", "numpy"):
    print(f"{name}=={version(name)}")
EOF
