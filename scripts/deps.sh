#!/usr/bin/env bash
# Installs the Debian packages the build (and, with --test, the browser and clock tests) need, only when
# they are missing. Used by `make run`, `make test` and .ci/run.
set -euo pipefail
need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ "${1:-}" = "--test" ]; then
  # The dashboard's browser test drives Debian's Chromium through chromedriver.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  # seed.redis runs a real redis-server (tests/tests/seed_redis.rs).
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # tests/tests/ha_etcd.rs runs a 3-member etcd (Debian bookworm: 3.4.23).
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  # tests/tests/clock.rs preloads libfaketime into a Ghost to shift its wall clock.
  command -v faketime >/dev/null 2>&1 || need+=(faketime)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${need[@]}"
