# shellcheck shell=bash
# Helpers shared by pi-image/build, pi-image/boot-test and pi-image/check (sourced, not run).

# Labels of the two partitions: cmdline.txt and /etc/fstab mount them by label, so the image
# has no UUID or PARTUUID to keep in step.
BOOT_LABEL=PIBOOT
ROOT_LABEL=PIROOT
BOOT_MIB=256          # FAT32 boot partition (firmware, kernel, initrd, DTBs: ~85 MiB used)
FIRST_MIB=4           # the boot partition starts at 4 MiB (erase-block aligned)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Step timing: `step_begin NAME` ... `step_end`; `step_report` prints the table.
STEP_NAMES=()
STEP_SECONDS=()
step_begin() {
    STEP_CURRENT=$1
    STEP_T0=$(date +%s.%N)
    log "$1"
}
step_end() {
    local t
    t=$(awk -v a="$STEP_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    STEP_NAMES+=("$STEP_CURRENT")
    STEP_SECONDS+=("$t")
    log "$STEP_CURRENT: ${t} s"
}
step_report() {
    local i total=0
    printf '\n%-28s %10s\n' step seconds
    for i in "${!STEP_NAMES[@]}"; do
        printf '%-28s %10s\n' "${STEP_NAMES[$i]}" "${STEP_SECONDS[$i]}"
        total=$(awk -v a="$total" -v b="${STEP_SECONDS[$i]}" 'BEGIN { printf "%.1f", a + b }')
    done
    printf '%-28s %10s\n' total "$total"
}

# Installs the Debian packages that provide the given commands, when a command is missing
# (package:command pairs; the command defaults to the package name).
need_tools() {
    local missing=() spec pkg cmd
    for spec in "$@"; do
        pkg=${spec%%:*}
        cmd=${spec#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing tools (${missing[*]}): apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian architecture -> qemu-user binfmt name, Rust target triple, kernel package, cross gcc:
# qemu_user_of, triple_of, kernel_of, cross_gcc_of, from the one table of targets.
# shellcheck source=cross/targets.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../cross/targets.sh"

# Registers qemu-user for the target architecture with binfmt_misc (flag F: the interpreter is
# opened now, so the chroot needs no copy of it).
enable_binfmt() {
    local q
    q=$(qemu_user_of "$1")
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "binfmt_misc is not mounted and cannot be (a container without it cannot run ARM programs)"
    fi
    update-binfmts --enable "qemu-$q" >/dev/null 2>&1 || true
    grep -qx enabled "/proc/sys/fs/binfmt_misc/qemu-$q" 2>/dev/null \
        || die "qemu-$q binfmt handler is not enabled (apt-get install qemu-user-static binfmt-support)"
}

# Renders a template: every @NAME@ is replaced by the value of the variable NAME; a
# placeholder without a variable is an error (no half-rendered file is ever installed).
render() {
    local template=$1 out=$2 text name value
    text=$(cat "$template")
    for name in $(grep -o '@[A-Z_][A-Z0-9_]*@' "$template" | sort -u | tr -d @); do
        [ -n "${!name+set}" ] || die "$template: no value for @$name@"
        value=${!name}
        text=${text//@$name@/$value}
    done
    printf '%s\n' "$text" >"$out"
}

# Assembles an MBR disk image from a boot tree and a root tree without loop devices or mounts:
# FAT32 with mkfs.vfat + mcopy, ext4 with mkfs.ext4 -d, the partition table with sfdisk on the
# image file, both partitions spliced in with dd. The root partition is the tree's size + 20 %
# + ROOT_SLACK_MIB (default 200), rounded up to 8 MiB; it grows to fill the card on first boot.
#   assemble_image BOOT_TREE ROOT_TREE OUT.img SCRATCH_DIR
assemble_image() {
    local boot_tree=$1 root_tree=$2 img=$3 scratch=$4 used root_mib
    local slack=${ROOT_SLACK_MIB:-200} boot_mib=${ASSEMBLE_BOOT_MIB:-$BOOT_MIB}
    mkdir -p "$scratch"
    rm -f "$scratch/boot.vfat" "$scratch/root.ext4" "$img"
    mkfs.vfat -F 32 -n "$BOOT_LABEL" -i 5A6F2C11 -C "$scratch/boot.vfat" $((boot_mib * 1024)) >/dev/null
    if [ -n "$(ls -A "$boot_tree")" ]; then
        mcopy -s -m -i "$scratch/boot.vfat" "$boot_tree"/* ::/
    fi
    used=$(du -s -x --block-size=1M --apparent-size "$root_tree" | cut -f1)
    root_mib=$(((used * 12 / 10 + slack + 7) / 8 * 8))
    mkfs.ext4 -q -L "$ROOT_LABEL" -U clear -E root_owner=0:0 -O ^huge_file \
        -d "$root_tree" "$scratch/root.ext4" "${root_mib}M"
    truncate -s $((FIRST_MIB + boot_mib + root_mib))M "$img"
    sfdisk --quiet "$img" <<EOF
label: dos
label-id: 0x5a6f2c11
unit: sectors
start=$((FIRST_MIB * 2048)), size=$((boot_mib * 2048)), type=c, bootable
start=$(((FIRST_MIB + boot_mib) * 2048)), size=$((root_mib * 2048)), type=83
EOF
    dd if="$scratch/boot.vfat" of="$img" bs=1M seek="$FIRST_MIB" conv=notrunc,sparse status=none
    dd if="$scratch/root.ext4" of="$img" bs=1M seek=$((FIRST_MIB + boot_mib)) conv=notrunc,sparse status=none
    # Checks: both filesystems clean, the table as written.
    fsck.vfat -n "$scratch/boot.vfat" >/dev/null || die "fsck.vfat found errors in the boot partition"
    e2fsck -fn "$scratch/root.ext4" >/dev/null 2>&1 || die "e2fsck found errors in the root partition"
    rm -f "$scratch/boot.vfat" "$scratch/root.ext4"
    # shellcheck disable=SC2034  # read by the caller
    ASSEMBLED_ROOT_MIB=$root_mib
}

# Byte offset of partition N (1-based) of an image: for `mtools -i IMG@@OFFSET` and debugfs.
partition_offset() {
    sfdisk -J "$1" | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; print(t["partitions"][int(sys.argv[1])-1]["start"]*512)' "$2"
}
