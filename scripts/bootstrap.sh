#!/usr/bin/env bash
# Set up robustlip on a fresh Debian/Ubuntu machine with Python 3.10+: a virtual environment in .venv
# with the project installed by pip. `--dev` adds the test tools and the real Fashion-MNIST files
# (Debian package dataset-fashion-mnist) that part of the test suite reads.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_packages=()
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_packages+=(python3-venv)
if [[ $dev -eq 1 && ! -d /usr/share/datasets/fashion-mnist ]]; then apt_packages+=(dataset-fashion-mnist); fi
if [[ ${#apt_packages[@]} -gt 0 ]]; then
  echo "bootstrap: installing Debian packages: ${apt_packages[*]}"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" \
    || echo "bootstrap: could not install ${apt_packages[*]} (no root?); continuing" >&2
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [[ $dev -eq 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q .
fi
echo "bootstrap: ready (.venv)"
