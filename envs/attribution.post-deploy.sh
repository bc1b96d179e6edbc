#!/usr/bin/env bash
# Snakemake runs this once after creating envs/attribution.yaml.
set -euo pipefail
python -m pip install --no-deps bergson==2.5.1
