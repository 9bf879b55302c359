# shellcheck shell=bash
# The machines bramble is built for, in one table (sourced, not run): cross/build, cross/test,
# cross/deb, cross/deb-check, cross/smoke, scripts/setup and pi-image/lib/common.sh look up
# what they need here. .cargo/config.toml repeats the linker and runner of the Pi targets,
# because cargo reads nothing else; cross/build checks that it agrees with this table.
#
# One row per Debian architecture, fields separated by `|`:
#
#   arch    Debian architecture (package names, dpkg)
#   triple  Rust target triple
#   qemu    qemu-user name: `qemu-<qemu>-static` runs the target's binaries (empty: the host)
#   prefix  GNU triplet with a trailing `-`: binutils (`<prefix>readelf`), gcc
#           (`gcc-<triplet>`), the target's sysroot (`/usr/<triplet>`); empty: the host's own
#   machine the ELF header's `Machine:` as `readelf -h` prints it
#   loader  the program interpreter of a glibc binary
#   kernel  the Debian kernel package of an SD image (empty: no image for this architecture)
BRAMBLE_TARGETS=(
    "amd64|x86_64-unknown-linux-gnu|||Advanced Micro Devices X86-64|/lib64/ld-linux-x86-64.so.2|"
    "arm64|aarch64-unknown-linux-gnu|aarch64|aarch64-linux-gnu-|AArch64|/lib/ld-linux-aarch64.so.1|linux-image-arm64"
    "armhf|armv7-unknown-linux-gnueabihf|arm|arm-linux-gnueabihf-|ARM|/lib/ld-linux-armhf.so.3|linux-image-armmp"
)
# The Pi targets (Raspberry Pi OS 64-bit and 32-bit), in the order the scripts build them.
# shellcheck disable=SC2034  # used by the scripts that source this file
PI_TRIPLES=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
# shellcheck disable=SC2034
PI_ARCHES=(arm64 armhf)
# shellcheck disable=SC2034
ALL_ARCHES=(amd64 arm64 armhf)
# This machine's triple: its binaries are cargo's host build (target/release, no --target).
HOST_TRIPLE=x86_64-unknown-linux-gnu

# target_field KEY N: field N (0 = arch ... 6 = kernel) of the row whose arch or triple is KEY.
# An unknown KEY is an error naming the known ones (status 2).
target_field() {
    local key=$1 n=$2 row
    local -a field
    for row in "${BRAMBLE_TARGETS[@]}"; do
        IFS='|' read -r -a field <<<"$row"
        if [ "${field[0]}" = "$key" ] || [ "${field[1]}" = "$key" ]; then
            printf '%s\n' "${field[$n]:-}"
            return 0
        fi
    done
    echo "unsupported target '$key' (architectures: ${ALL_ARCHES[*]}; or their Rust triples)" >&2
    return 2
}

# Each takes an architecture or a triple.
arch_of() { target_field "$1" 0; }
triple_of() { target_field "$1" 1; }
qemu_user_of() { target_field "$1" 2; }
tools_prefix_of() { target_field "$1" 3; }
elf_machine_of() { target_field "$1" 4; }
loader_of() { target_field "$1" 5; }

# The command that runs the target's binaries here: `qemu-aarch64-static -L /usr/aarch64-linux-gnu`
# (the sysroot named, so no binfmt_misc registration is needed); empty for the host.
runner_of() {
    local qemu prefix
    qemu=$(qemu_user_of "$1") && prefix=$(tools_prefix_of "$1") || return 2
    [ -z "$qemu" ] || echo "qemu-$qemu-static -L /usr/${prefix%-}"
}

# The release `bramble` cargo builds for the target: the host's in target/release.
binary_of() {
    local triple
    triple=$(triple_of "$1") || return 2
    if [ "$triple" = "$HOST_TRIPLE" ]; then
        echo target/release/bramble
    else
        echo "target/$triple/release/bramble"
    fi
}

# The Debian packages of the target's cross toolchain (gcc, libc, binutils); an error for the
# host.
cross_packages_of() {
    local arch prefix
    arch=$(arch_of "$1") && prefix=$(tools_prefix_of "$1") || return 2
    if [ -z "$prefix" ]; then
        echo "$1 is this machine's architecture: no cross toolchain" >&2
        return 2
    fi
    echo "gcc-${prefix%-} libc6-dev-$arch-cross binutils-${prefix%-}"
}

# The cross gcc package alone (the static demo functions of the SD image need only it).
cross_gcc_of() {
    local packages
    packages=$(cross_packages_of "$1") || return 2
    echo "${packages%% *}"
}

# The kernel package of an SD image for the target; an error where there is no image.
kernel_of() {
    local kernel
    kernel=$(target_field "$1" 6) || return 2
    if [ -z "$kernel" ]; then
        echo "no SD image for $1 (images: ${PI_ARCHES[*]})" >&2
        return 2
    fi
    echo "$kernel"
}
