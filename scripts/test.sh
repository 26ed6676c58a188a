#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls it too).
# Installs the Debian packages the tests need, checks that no crate has an import cycle
# between its files (scripts/check-cycles.py), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the test suite needs; installed only when missing.
# libopenmpi-dev openmpi-bin libclang-dev: the MPI backend of the executor (mpi crate, mpirun).
# libwayland-dev: eframe's build (even with Wayland off); mesa-vulkan-drivers: the UI
# snapshot test renders through wgpu on Mesa's CPU Vulkan driver (lavapipe).
# python3-protobuf: the independent decoder of the Chakra traces (scripts/check-chakra.py, run
# by sim/tests/chakra.rs with Debian's /usr/bin/python3 when the python3 on the path lacks it).
PACKAGES=(libopenmpi-dev openmpi-bin libclang-dev libwayland-dev libxkbcommon-dev mesa-vulkan-drivers
    python3-protobuf)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing Debian packages: ${missing[*]} (install them, or run as root)" >&2
        exit 1
    fi
fi

# Import cycles between the source files of each crate (the rule is in the script's header).
python3 scripts/check-cycles.py
# One build for everything: the workspace with the MPI backend on (the `mpi` feature of the
# CLI, hence of the trainer and the twin), so cli/tests/mpi.rs runs `mpirun` jobs too.
cargo test --workspace --locked --features pangu-cli/mpi
