#!/usr/bin/env bash
# Set up the lab on a fresh machine: system data (Fashion-MNIST), .venv, the project installed into it.
# Idempotent: a second run only checks. `--test` also brings headless Chromium for the report test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

packages=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then packages+=(chromium); fi
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install ${packages[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "[setup] not installed: ${packages[*]} (sudo apt-get install ${packages[*]});" \
         "without it, run studies with --download to fetch Fashion-MNIST through torchvision" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  python3 -m venv .venv
fi
stamp=".venv/.lab-installed"
want="$(sha1sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the lab and its dependencies into .venv (torch/torchvision: a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi
