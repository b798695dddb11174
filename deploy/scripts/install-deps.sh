#!/usr/bin/env bash
# Installs what ipsecd's demo and test suite need on a fresh Debian 12 machine (as root):
# Debian packages first (only those missing, so a second run costs nothing), then a
# virtualenv in .venv with ipsecd installed editable and its test extras.
set -euo pipefail
cd "$(dirname "$0")/../.."

DEB_PACKAGES=(
  python3 python3-venv python3-dev gcc make
  iproute2 nftables tcpdump iperf3 procps psmisc
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins strongswan-pki
  prometheus
  systemd
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services (charon, prometheus) from starting:
  # the tests start their own instances inside namespaces.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

VENV=${VENV:-.venv}
# Debian's own python3.11 (built with PGO/LTO): the interpreter an operator's
# Debian 12 gateway runs, and measurably faster per packet than a local build.
PYTHON=${PYTHON:-/usr/bin/python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.ipsecd-deps"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi
