#!/usr/bin/env bash
# CPython 3.11, 3.12 and 3.13 for the benchmark, built alike, and a venv for each with
# edgemesh's dependencies.  A benchmark tool, not CI.  As root, from anywhere:
#     bash bench/pythons.sh                 # all three; prints the paths for PYTHONS
#     bash bench/pythons.sh 3.13            # only one
#     PYTHONS="$(bash bench/pythons.sh)" bash bench/run.sh
# Where an interpreter comes from (FROM):
#   debian: the upstream tarball of Debian's source package python3.X (the .orig.tar.xz/gz, without
#     Debian's patches; the newest version among SUITES), built into /opt/python3.X.  Debian no
#     longer carries python3.12 in any suite, so for a version it lacks this falls back to pyenv
#     (a machine without pyenv's 3.12 has no 3.12: the script stops with an error).
#   pyenv: pyenv's own build ($(pyenv root)/versions/3.X.*, the newest), when there is one.
# Every build here uses pyenv's default flags (--enable-shared, -O3, no PGO, no LTO), so the
# two kinds compare with each other.  The venv is $VENV_ROOT/<full version> (3.13.15, 3.12.1).
# SHARED=0 builds without --enable-shared into /opt/python3.X-static (venv 3.13.15-static):
# from 3.12 on, a libpython.so reads the thread state through __tls_get_addr (a call per
# access), which an interpreter linked statically does not (Debian's own /usr/bin/python3).
# Idempotent: a built interpreter that imports ssl, ctypes, sqlite3, lzma, bz2, zlib and
# readline is kept, and so is a venv that already imports the dependencies.
# Knobs (env): FROM=debian  PREFIX_ROOT=/opt  VENV_ROOT=/opt/edgemesh-venvs
#   SUITES="bookworm trixie forky sid"  WORK=/var/tmp/edgemesh-pythons (downloads, builds)
#   OPTIMIZE=0 (1: --enable-optimizations --with-lto, PGO: about an hour each on 2 cores)
#   JOBS=2  SKIP_INSTALL=0 (1: no apt-get)
# --print: the venvs of what is already there (built here, else pyenv's), building nothing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
FROM="${FROM:-debian}"
PREFIX_ROOT="${PREFIX_ROOT:-/opt}"
VENV_ROOT="${VENV_ROOT:-/opt/edgemesh-venvs}"
SUITES="${SUITES:-bookworm trixie forky sid}"
WORK="${WORK:-/var/tmp/edgemesh-pythons}"
OPTIMIZE="${OPTIMIZE:-0}"
SHARED="${SHARED:-1}"
SUFFIX=""
if [[ "$SHARED" == 0 ]]; then SUFFIX=-static; fi
JOBS="${JOBS:-2}"
MIRROR=http://deb.debian.org/debian

print_only=0
versions=()
for a in "$@"; do
  case "$a" in
    --print) print_only=1 ;;
    3.1[0-9]) versions+=("$a") ;;
    *) echo "pythons.sh: unknown argument $a (versions like 3.12, or --print)" >&2; exit 2 ;;
  esac
done
((${#versions[@]})) || versions=(3.11 3.12 3.13)

log() { echo "pythons.sh: $*" >&2; }
STDLIB_CHECK='import ssl, ctypes, sqlite3, lzma, bz2, zlib, readline, venv, ensurepip'
DEPS_CHECK='import twisted, treq, OpenSSL, cryptography, service_identity, kubernetes, msgpack'
DEPS_CHECK+=', yaml, prometheus_client, httptools, websockets, grpc, pytest, hypothesis'

if [[ "${SKIP_INSTALL:-0}" != 1 && $print_only == 0 ]]; then
  [[ $(id -u) == 0 ]] || { log "need root for apt-get (or SKIP_INSTALL=1)"; exit 1; }
  need=()
  for p in build-essential pkg-config xz-utils dpkg-dev libssl-dev libffi-dev zlib1g-dev \
      libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
  done
  if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >/dev/null
  fi
fi

# One run at a time builds (two in the same build directory would clash).
if ((print_only == 0)); then
  mkdir -p "$WORK"
  exec 9>"$WORK/lock"
  flock 9
fi

# A private apt state with deb-src lines: the machine's own sources.list stays as it is.
APT="$WORK/apt"
apt_opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/none"
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
          -o "Debug::NoLocking=1" -o "APT::Get::Only-Source=1")
apt_ready=0
apt_setup() {
  ((apt_ready)) && return 0
  mkdir -p "$APT/lists/partial" "$APT/none" "$APT/cache/archives/partial"
  : >"$APT/sources.list"
  for s in $SUITES; do
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $s main" \
      >>"$APT/sources.list"
  done
  # Lists older than a day are fetched again (sid moves).
  if [[ -z "$(find "$APT/lists" -maxdepth 1 -name '*Sources*' -mtime -1 2>/dev/null)" ]]; then
    log "apt-get update (deb-src: $SUITES)"
    apt-get "${apt_opts[@]}" update -qq
  fi
  apt_ready=1
}

# The upstream tarball of python3.X, once: the newest version among $SUITES whose files the
# mirror has (a suite's Sources can list a version before or after its pool holds the files).
fetch_source() {
  local v="$1" dir="$WORK/src/$1"
  local tarball pattern="python${v}_*.orig.tar.[gx]z"
  tarball="$(find "$dir" -maxdepth 1 -name "$pattern" 2>/dev/null | head -1)"
  if [[ -z "$tarball" ]]; then
    apt_setup
    mkdir -p "$dir"
    local ver
    for ver in $(apt-cache "${apt_opts[@]}" showsrc "python$v" 2>/dev/null |
                 sed -n 's/^Version: //p' | sort -rV | uniq); do
      log "downloading the source of python$v $ver"
      if (cd "$dir" && apt-get "${apt_opts[@]}" source --download-only -qq "python$v=$ver") \
          >"$dir/apt.out" 2>&1; then
        break
      fi
      log "  not to be had: $(grep -m1 '^E:' "$dir/apt.out" || true)"
    done
    tarball="$(find "$dir" -maxdepth 1 -name "$pattern" | head -1)"
  fi
  echo "$tarball"
}

pyenv_python() {  # the newest of pyenv's own 3.X builds, if any
  local v="$1" root
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  find "$root/versions" -maxdepth 1 -name "$v.[0-9]*" 2>/dev/null | sort -V | tail -1 |
    sed 's|$|/bin/python'"$v"'|' | { read -r exe && [[ -x "$exe" ]] && echo "$exe"; } || true
}

# The interpreter python3.X, built here when FROM=debian and Debian has its source.
interpreter() {
  local v="$1" prefix="$PREFIX_ROOT/python$1$SUFFIX"
  local exe="$prefix/bin/python$v"
  if [[ "$FROM" == debian ]]; then
    if [[ -x "$exe" ]] && "$exe" -c "$STDLIB_CHECK" 2>/dev/null; then echo "$exe"; return; fi
    local tarball=""
    ((print_only)) || tarball="$(fetch_source "$v")"
    if [[ -n "$tarball" ]]; then build "$v" "$tarball"; echo "$exe"; return; fi
    if ((print_only)); then log "$exe is not built: pyenv's python$v, if there is one"
    else log "Debian has no python$v source in $SUITES: pyenv's, if there is one"; fi
    if [[ "$SHARED" == 0 ]]; then log "  (pyenv's builds use --enable-shared)"; fi
  fi
  exe="$(pyenv_python "$v")"
  [[ -n "$exe" ]] || { log "no python$v: not in Debian ($SUITES), not in pyenv"; exit 1; }
  "$exe" -c "$STDLIB_CHECK" || { log "$exe lacks a stdlib module"; exit 1; }
  echo "$exe"
}

build() {
  local v="$1" tarball="$2" prefix="$PREFIX_ROOT/python$1$SUFFIX"
  local build_dir="$WORK/build/$1$SUFFIX"
  rm -rf "$build_dir"
  mkdir -p "$build_dir"
  tar -xf "$tarball" -C "$build_dir" --strip-components=1
  local flags=(--prefix="$prefix" --with-ensurepip=install)
  if [[ "$SHARED" != 0 ]]; then flags+=(--enable-shared "LDFLAGS=-Wl,-rpath,$prefix/lib"); fi
  if ((OPTIMIZE)); then flags+=(--enable-optimizations --with-lto); fi
  log "building $(basename "$tarball") into $prefix (${flags[*]}), log in $build_dir/*.out"
  (
    cd "$build_dir"
    ./configure -q "${flags[@]}" >"$build_dir/configure.out" 2>&1
    nice -n 10 make -s -j"$JOBS" >"$build_dir/make.out" 2>&1
    make -s altinstall >"$build_dir/install.out" 2>&1
  ) || { log "build of python$v failed: see $build_dir/*.out"; exit 1; }
  "$prefix/bin/python$v" -c "$STDLIB_CHECK" || { log "python$v lacks a stdlib module"; exit 1; }
  rm -rf "$build_dir"
}

# The dependencies of setup.cfg (install_requires and the test extra), not edgemesh itself:
# the mesh runs from the checkout (PYTHONPATH), so one venv serves every tree.
venv() {
  local exe="$1" dir="$2"
  if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c "$DEPS_CHECK" 2>/dev/null; then
    return 0
  fi
  if ((print_only)); then log "$dir has no dependencies yet"; exit 1; fi
  log "venv $dir"
  "$exe" -m venv --clear "$dir"
  local reqs
  reqs="$("$dir/bin/python" - "$REPO/setup.cfg" <<'EOF2'
import configparser, sys
cfg = configparser.RawConfigParser()
cfg.read(sys.argv[1])
lines = cfg["options"]["install_requires"].splitlines()
lines += cfg["options.extras_require"]["test"].splitlines()
reqs = {ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")}
print("\n".join(sorted(reqs)))
EOF2
)"
  mapfile -t req_list <<<"$reqs"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "${req_list[@]}"
  "$dir/bin/python" -c "$DEPS_CHECK"
}

out=()
for v in "${versions[@]}"; do
  exe="$(interpreter "$v")"
  full="$("$exe" -c 'import platform; print(platform.python_version())')"
  if [[ "$exe" == "$PREFIX_ROOT/"* ]]; then full+="$SUFFIX"; fi  # pyenv's are all shared
  venv "$exe" "$VENV_ROOT/$full"
  out+=("$VENV_ROOT/$full/bin/python")
done
log "ready: PYTHONS=\"${out[*]}\""
echo "${out[*]}"
