#!/usr/bin/env bash
# The GPU check in one device call, as the README gives it:  bash bench/device_command.sh <commit>
# The stages and their caps are bench/gpu_check.py's STAGES (445 s in all, each stage killed at
# its deadline); this outer timeout only backs them up, and stays under the 8 minutes of a call.
export PATH="/usr/local/cuda/bin:$PATH" OUT="${OUT:?OUT must name the folder for the results}"
timeout 10 nvidia-smi -L >"$OUT/preflight.txt" 2>&1
exec timeout -k 5 460 python3 bench/gpu_check.py --out "$OUT" --commit "${1:?usage: bash bench/device_command.sh <commit>}"
