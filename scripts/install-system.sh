#!/usr/bin/env bash
# System tools the observability and Kubernetes tests use: Prometheus (a real server scraping a local
# Ray cluster) and kubectl (renders the kustomize overlays). Debian packages, installed only when the
# command is missing: one `apt-get update`, then one `apt-get install`. Fast (no apt call) when present.
# Usage: scripts/install-system.sh        (as root, or with sudo available)
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-system: not root and no sudo; install the Debian packages 'prometheus' and 'kubectl' yourself" >&2
    exit 1
  fi
fi

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system: up to date (prometheus, kubectl)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system: no apt-get here; install ${missing[*]} with your system's package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
packages=()
for tool in "${missing[@]}"; do
  if [ "$tool" = kubectl ] && ! apt-cache show kubectl >/dev/null 2>&1; then
    packages+=(kubernetes-client)  # Debian 12 ships kubectl in this package
  else
    packages+=("$tool")
  fi
done
# No service is started here: the tests and `python -m mpcformer.jobs.monitor` run their own Prometheus.
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "install-system: installed ${packages[*]}"
