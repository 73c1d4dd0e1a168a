#!/usr/bin/env bash
# What to run when a session is lent a GPU (the device tool runs this from the repository root):
# GPU parity first (tests/test_gpu.py skips everywhere else), then the speed figures for benchmarks/RESULTS.md.
# Needs the test extras and torch-em, as in the README's test command, with a CUDA build of torch.
set -euo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python -m pytest -q -p no:cacheprovider tests/test_gpu.py
python benchmarks/bench_encoder.py --device cuda --repeats 10
python benchmarks/bench_unetr.py --device cuda --repeats 10
python benchmarks/bench_ais.py --device cuda --size 1024
