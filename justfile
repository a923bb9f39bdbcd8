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

# the slow tests (real small models, multi-process training, long pipelines)
test-slow *ARGS:
    {{bin}}/python -m pytest -q -m slow {{ARGS}}

# lint
lint:
    {{bin}}/ruff check thinkrl stages tests

# regenerate docs/ARTIFACTS.md from the schemas
docs:
    {{bin}}/python -m thinkrl.artifacts > docs/ARTIFACTS.md

# speed benchmarks: prints figures and writes them to docs/BENCHMARKS.md (sections: sampling, train)
bench *SECTIONS:
    {{bin}}/python benchmarks/bench.py {{SECTIONS}}
