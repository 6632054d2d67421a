#!/usr/bin/env bash
# The GPU check in one device call, as the README gives it:  bash bench/device_command.sh <commit>
# Give the call a timeout_s of at least 540. The stages and their caps are bench/gpu_check.py's
# STAGES (450 s in all, each stage killed at its deadline); the outer timeout only backs them up:
# 10 s for nvidia-smi + 480 s + 5 s to kill = 495 s at most, inside the 540.
commit="${1:?usage: bash bench/device_command.sh <commit>}"
export PATH="/usr/local/cuda/bin:$PATH" OUT="${OUT:?OUT must name the folder for the results}"
timeout 10 nvidia-smi -L >"$OUT/preflight.txt" 2>&1
exec timeout -k 5 480 python3 bench/gpu_check.py --out "$OUT" --commit "$commit"
