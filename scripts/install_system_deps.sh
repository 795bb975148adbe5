#!/usr/bin/env bash
# Install the Debian packages of the single-node Slurm cluster used by the launcher tests
# (scripts/slurm_cluster.sh). Idempotent: a fast no-op when everything is installed.
#   bash scripts/install_system_deps.sh
# Not root and packages missing: prints what is needed and exits 0, so the rest of the suite still runs;
# the Slurm tests then fail with the same message (tests/cluster_fixtures.py).
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
# One binary per package: what scripts/slurm_cluster.sh actually runs.
BINARIES=(munged mungekey slurmctld slurmd sbatch sacct sacctmgr slurmdbd mariadbd mariadb-install-db)

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

missing_binaries() {
  local b
  for b in "${BINARIES[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || echo "$b"
  done
}

missing=$(missing_packages | tr '\n' ' ')
if [ -z "${missing// /}" ] && [ -z "$(missing_binaries)" ]; then
  echo "[system-deps] Slurm/MariaDB/munge packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "[system-deps] NOT INSTALLED: ${missing}- the Slurm tests need the Debian packages" \
       "${PACKAGES[*]} and root to run the cluster. Install them with:" \
       "sudo apt-get install -y --no-install-recommends ${PACKAGES[*]}" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists do not know the packages (fresh machine, empty lists).
if ! apt-cache show slurmctld mariadb-server munge >/dev/null 2>&1; then
  echo "[system-deps] apt-get update"
  apt-get update -q
fi
echo "[system-deps] installing: ${missing}"
# policy-rc.d keeps dpkg from starting daemons (no systemd here; the cluster script starts them itself).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

still=$(missing_binaries | tr '\n' ' ')
if [ -n "${still// /}" ]; then
  echo "[system-deps] installed the packages but these binaries are still missing: $still" >&2
  exit 1
fi
echo "[system-deps] installed ${PACKAGES[*]}"
