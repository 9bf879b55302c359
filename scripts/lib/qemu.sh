# shellcheck shell=bash
# Installing QEMU's system emulators (qemu-system-arm, qemu-system-x86) on Debian 12, sourced by
# every script that boots a virtual machine (pi-image/boot-test, vm/test).
#
# The catch: a machine may already carry QEMU packages from bookworm-backports (qemu-utils
# 10.0.2 here). Those declare `Breaks: qemu-system-common (<< 1:8.0)`, so bookworm's own
# qemu-system-* 7.2 cannot be installed beside them: the emulator must come from the suite the
# installed QEMU came from. On a plain Debian 12 (no backports QEMU) bookworm's packages are
# right. qemu_install decides and installs; for backports it adds a sources file of our own,
#
#   /etc/apt/sources.list.d/bramble-backports.sources   (suite <codename>-backports)
#
# on the same mirror and keyring as the machine's own Debian entry; it never edits the
# machine's sources. Everything this reads or runs can be pointed elsewhere for the unit test
# (scripts/lib/qemu_test): QEMU_DPKG_QUERY, QEMU_APT_GET, QEMU_OS_RELEASE, QEMU_APT_DIR.

# The installed packages of QEMU's own source package, as "name version" lines. qemu-user* are
# left out: they do not constrain qemu-system-* (and Debian 12 ships qemu-user-static 7.2 beside
# a backports qemu-utils without conflict).
qemu_installed() {
    # shellcheck disable=SC2016  # dpkg-query's format, not the shell's
    "${QEMU_DPKG_QUERY:-dpkg-query}" -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' 'qemu-*' 2>/dev/null \
        | awk '$3 ~ /^.i/ && $1 !~ /^qemu-user/ { print $1, $2 }'
}

# This machine's release codename (bookworm, trixie, ...).
qemu_codename() {
    local file=${QEMU_OS_RELEASE:-/etc/os-release} codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' "$file" 2>/dev/null | tr -d '"' | head -1)
    [ -n "$codename" ] || { echo "cannot tell the Debian release: no VERSION_CODENAME in $file" >&2; return 1; }
    echo "$codename"
}

# The suite qemu-system-* must come from: empty for the release's own, "<codename>-backports"
# when an installed QEMU package is a backport (Debian backports' versions carry "~bpo").
qemu_suite() {
    local codename installed
    codename=$(qemu_codename) || return 1
    installed=$(qemu_installed)
    if awk '$2 ~ /~bpo/ { found = 1 } END { exit !found }' <<<"$installed"; then
        echo "$codename-backports"
    fi
}

# The first Debian archive entry of the machine's sources ("URI|Signed-By"), from deb822
# files (debian.sources) or one-line sources.list entries; security and backports entries are
# skipped. Signed-By is empty when the entry names none.
debian_mirror() {
    local dir=${QEMU_APT_DIR:-/etc/apt} codename file
    codename=$(qemu_codename) || return 1
    for file in "$dir"/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        case "$(basename "$file")" in bramble-*) continue ;; esac
        awk -v codename="$codename" '
            function flush() {
                if (enabled && uri != "" && suites ~ ("(^| )" codename "( |$)") && uri !~ /security/) {
                    print uri "|" signed; found = 1; exit
                }
                uri = ""; suites = ""; signed = ""; enabled = 1
            }
            BEGIN { enabled = 1 }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { $1 = ""; suites = $0; sub(/^ +/, "", suites) }
            tolower($1) == "signed-by:" { signed = $2 }
            tolower($1) == "enabled:" { enabled = ($2 != "no") }
            END { if (!found) flush() }
        ' "$file" | head -1 | grep . && return 0
    done
    for file in "$dir/sources.list" "$dir"/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        awk -v codename="$codename" '
            $1 == "deb" {
                i = 2; signed = ""
                if ($2 ~ /^\[/) {
                    for (; i <= NF; i++) {
                        if ($i ~ /signed-by=/) { signed = $i; sub(/.*signed-by=/, "", signed); sub(/\]$/, "", signed) }
                        if ($i ~ /\]$/) { i++; break }
                    }
                }
                if ($(i + 1) == codename && $i !~ /security/) { print $i "|" signed; exit }
            }' "$file" | head -1 | grep . && return 0
    done
    echo "no Debian $codename entry in $dir/sources.list.d/*.sources or $dir/sources.list: cannot tell which mirror to take $codename-backports from" >&2
    return 1
}

# Writes the backports sources file (once; an existing one is left alone).
qemu_write_backports_sources() {
    local suite=$1 dir=${QEMU_APT_DIR:-/etc/apt} mirror uri signed file
    file=$dir/sources.list.d/bramble-backports.sources
    [ -f "$file" ] && return 0
    mirror=$(debian_mirror) || return 1
    uri=${mirror%%|*}
    signed=${mirror#*|}
    [ -n "$signed" ] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
    {
        echo "# Written by bramble's scripts/lib/qemu.sh: the installed QEMU packages come from $suite,"
        echo "# so qemu-system-* must too. Same mirror and keyring as the Debian entry of this machine."
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: $suite"
        echo "Components: main"
        echo "Signed-By: $signed"
    } >"$file"
}

# Installs the given qemu-system-* packages (those not installed yet) from the right suite.
#   qemu_install qemu-system-x86 [qemu-system-arm ...]
qemu_install() {
    local suite missing=() pkg apt=${QEMU_APT_GET:-apt-get}
    for pkg in "$@"; do
        # shellcheck disable=SC2016  # dpkg-query's format
        "${QEMU_DPKG_QUERY:-dpkg-query}" -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^.i' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    suite=$(qemu_suite) || return 1
    if [ "$(id -u)" -ne 0 ] && [ -z "${QEMU_APT_GET:-}" ]; then
        echo "missing ${missing[*]}: run as root (sudo), which installs them${suite:+ from $suite}" >&2
        return 1
    fi
    if [ -n "$suite" ]; then
        echo "==> installing ${missing[*]} from $suite (the installed QEMU is a backport: $(qemu_installed | awk '$2 ~ /~bpo/ {print $1 " " $2}' | head -1))" >&2
        qemu_write_backports_sources "$suite" || return 1
        "$apt" update -q >&2 || return 1
        DEBIAN_FRONTEND=noninteractive "$apt" install -y -q --no-install-recommends -t "$suite" "${missing[@]}" >&2
    else
        echo "==> installing ${missing[*]}" >&2
        "$apt" update -q >&2 || return 1
        DEBIAN_FRONTEND=noninteractive "$apt" install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
}
