#!/usr/bin/env bash
# Debian packages the tests start for real: Chromium and its driver (the web page), nats-server
# (the post stream on a broker), Slurm and munge (training launched by a scheduler).
# Idempotent: installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
pkgs=(chromium chromium-driver nats-server slurm-wlm munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
# through env: sudo resets the environment, so a plain VAR=value prefix would not reach apt-get
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
