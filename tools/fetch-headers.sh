#!/usr/bin/env bash
# Fetch the Linux uAPI headers that passthru.uapi is tested against (tests/uapi), without
# installing anything and without touching the machine's apt configuration.
#
# Downloads Debian's linux-libc-dev from trixie-backports (Linux 7.3 headers) with a private
# apt config (its own sources.list, lists and cache in a temporary directory), unpacks it with
# dpkg-deb -x into DEST, and prints DEST/usr/include on stdout (progress goes to stderr):
#
#   export PASSTHRU_UAPI_HEADERS=$(tools/fetch-headers.sh)
#
# linux-libc-dev does not install drivers/iommu/iommufd/iommufd_test.h (the CONFIG_IOMMUFD_TEST
# interface the iommufd selftests include), so the script also downloads the same version of
# Debian's linux-source-X.Y (~167 MB, kept in the temporary directory only) and extracts just
# that one file from its /usr/src/linux-source-X.Y.tar.xz into
# DEST/usr/include/drivers/iommu/iommufd/iommufd_test.h (nothing else of the source is kept).
#
# Usage: tools/fetch-headers.sh [DEST]      (default DEST: ~/.cache/passthru/uapi-headers)
# Idempotent: what DEST already holds is not fetched again (a DEST made before iommufd_test.h
# was fetched gets just that file); delete DEST to fetch everything again. The mirror URI is
# taken from the machine's Debian apt sources (/etc/apt/sources.list.d/debian.sources, or
# /etc/apt/sources.list), else deb.debian.org.
# Environment: PASSTHRU_DEBIAN_MIRROR overrides the mirror URI, PASSTHRU_HEADERS_SUITE the
# suite (default trixie-backports).
set -euo pipefail

dest=${1:-$HOME/.cache/passthru/uapi-headers}
suite=${PASSTHRU_HEADERS_SUITE:-trixie-backports}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
marker=usr/include/linux/iommufd.h
test_header=drivers/iommu/iommufd/iommufd_test.h  # its path in the kernel source tree
test_marker=usr/include/$test_header

log() { printf '%s\n' "fetch-headers: $*" >&2; }

need_libc=1 need_src=1
[[ -f "$dest/$marker" ]] && need_libc=0
[[ -f "$dest/$test_marker" ]] && need_src=0
if ((!need_libc && !need_src)); then
    src_info=$(paste -sd';' "$dest/.passthru-source" 2>/dev/null || echo 'source unknown')
    log "already there: $dest (${src_info//;/; })"
    printf '%s\n' "$dest/usr/include"
    exit 0
fi

for tool in apt-get dpkg-deb tar xz; do
    command -v "$tool" >/dev/null || {
        if [[ $tool == xz ]]; then
            log "needs xz (Debian package xz-utils)"
        else
            log "needs $tool (a Debian-like system)"
        fi
        exit 1
    }
done
[[ -f $keyring ]] || { log "needs $keyring (Debian package debian-archive-keyring)"; exit 1; }

# The machine's Debian mirror (tools/lib/debian-mirror.sh), else deb.debian.org.
# shellcheck source=lib/debian-mirror.sh
source "$(dirname "$0")/lib/debian-mirror.sh"
mirror=${PASSTHRU_DEBIAN_MIRROR:-$(debian_mirror_uri)}
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

# shellcheck source=lib/apt-private.sh
source "$(dirname "$0")/lib/apt-private.sh"
work=$(mktemp -d)
tmp=""
trap 'rm -rf "$work"; if [[ -n $tmp ]]; then rm -rf "$tmp"; fi' EXIT
mkdir -p "$work/deb" "$work/src"
log "apt-get update ($mirror $suite, private config in $work)"
apt_private_init "$work" "$suite" "$mirror"

# download SPEC DIR: apt-get download the package SPEC into the empty DIR; print the .deb.
download() {
    log "apt-get download $1"
    apt_private_download "$1" "$2"
}

mkdir -p "$(dirname "$dest")"

if ((need_libc)); then
    deb=$(download "linux-libc-dev/$suite" "$work/deb")
    version=$(dpkg-deb -f "$deb" Version)

    # Unpack next to DEST, then move into place, so DEST is either complete or absent.
    tmp=$(mktemp -d "$dest.partial.XXXXXX")
    dpkg-deb -x "$deb" "$tmp"
    [[ -f "$tmp/$marker" ]] || { log "the package has no $marker"; exit 1; }
    printf 'linux-libc-dev %s from %s %s, sha256 %s\n' "$version" "$mirror" "$suite" \
        "$(sha256sum "$deb" | cut -d' ' -f1)" >"$tmp/.passthru-source"
    chmod 755 "$tmp"
    [[ -d $dest ]] && rmdir "$dest" 2>/dev/null || true  # an empty DEST is fine
    if [[ -e $dest ]]; then
        log "$dest appeared meanwhile (another run?); not overwriting it"
        [[ -f "$dest/$marker" ]] || exit 1
    else
        mv "$tmp" "$dest"
        log "linux-libc-dev $version unpacked into $dest"
    fi
    rm -rf "$tmp"
    tmp=""
fi

if [[ ! -f "$dest/$test_marker" ]]; then
    # The kernel source of the headers' own version: linux-source-X.Y, the same Debian version.
    version=$(sed -n 's/^linux-libc-dev \([^ ]*\) .*/\1/p' "$dest/.passthru-source" 2>/dev/null |
        head -n1 || true)
    if [[ -z $version ]]; then
        log "$dest/.passthru-source names no linux-libc-dev version; delete $dest to fetch again"
        exit 1
    fi
    src_pkg=linux-source-$(cut -d. -f1,2 <<<"$version")
    deb=$(download "$src_pkg=$version" "$work/src") || {
        log "$src_pkg $version is not in $mirror $suite; delete $dest to fetch a matching pair"
        exit 1
    }
    # Stream the one member out of the .deb's data and out of the source tarball: nothing of
    # the source tree but that header touches the disk.
    tmp=$(mktemp -d "$dest.partial.XXXXXX")
    log "extracting $test_header from $src_pkg $version (/usr/src/$src_pkg.tar.xz)"
    dpkg-deb --fsys-tarfile "$deb" |
        tar -xOf - "./usr/src/$src_pkg.tar.xz" |
        tar -xJf - -C "$tmp" "$src_pkg/$test_header"
    [[ -f "$tmp/$src_pkg/$test_header" ]] || { log "$src_pkg has no $test_header"; exit 1; }
    chmod 644 "$tmp/$src_pkg/$test_header"
    mkdir -p "$(dirname "$dest/$test_marker")"
    mv "$tmp/$src_pkg/$test_header" "$dest/$test_marker"
    printf '%s %s from %s %s, sha256 %s: only %s, as %s\n' "$src_pkg" "$version" "$mirror" \
        "$suite" "$(sha256sum "$deb" | cut -d' ' -f1)" "$test_header" "$test_marker" \
        >>"$dest/.passthru-source"
    log "$src_pkg $version: $test_header extracted into $dest/$test_marker"
fi
printf '%s\n' "$dest/usr/include"
