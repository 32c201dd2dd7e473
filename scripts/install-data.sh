#!/usr/bin/env bash
# Installs Debian's Fashion-MNIST package (the IDX files in /usr/share/datasets/fashion-mnist)
# where apt is available. Without it, fedticket can still use a directory of IDX files
# given as data.path, sklearn's bundled digits, or a download where a network exists.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: apt-get not found; Fashion-MNIST tests will be skipped (set data.path to IDX files)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "note: not root and no passwordless sudo; run: sudo apt-get install dataset-fashion-mnist" >&2
    exit 0
  fi
fi
echo "installing Debian package dataset-fashion-mnist ..." >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
