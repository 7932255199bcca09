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
# Usage: tools/fetch-headers.sh [DEST]      (default DEST: ~/.cache/passthru/uapi-headers)
# Idempotent: if DEST already holds the headers it only prints the path; delete DEST to
# fetch again. The mirror URI is taken from the machine's Debian apt sources
# (/etc/apt/sources.list.d/debian.sources, or /etc/apt/sources.list), else deb.debian.org.
# Environment: PASSTHRU_DEBIAN_MIRROR overrides the mirror URI, PASSTHRU_HEADERS_SUITE the
# suite (default trixie-backports).
set -euo pipefail

dest=${1:-$HOME/.cache/passthru/uapi-headers}
suite=${PASSTHRU_HEADERS_SUITE:-trixie-backports}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
marker=usr/include/linux/iommufd.h

log() { printf '%s\n' "fetch-headers: $*" >&2; }

if [[ -f "$dest/$marker" ]]; then
    log "already there: $dest ($(cat "$dest/.passthru-source" 2>/dev/null || echo 'source unknown'))"
    printf '%s\n' "$dest/usr/include"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { log "needs $tool (a Debian-like system)"; exit 1; }
done
[[ -f $keyring ]] || { log "needs $keyring (Debian package debian-archive-keyring)"; exit 1; }

# The machine's Debian mirror: the first non-security URI in its apt sources.
mirror_uri() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            /^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }
        ' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '
            $1 == "deb" {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {
                    if ($i !~ /security/) { print $i; exit } else break
                }
            }
        ' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}
mirror=${PASSTHRU_DEBIAN_MIRROR:-$(mirror_uri)}
mirror=${mirror%/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
cat >"$work/sources.list" <<EOF
deb [signed-by=$keyring] $mirror $suite main
deb [signed-by=$keyring] $mirror ${suite%%-*} main
EOF

apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "Debug::NoLocking=1"
    -o "Acquire::Languages=none"
)
# apt drops privileges to _apt for downloads, which cannot write into a root-only temp dir.
if [[ $(id -u) == 0 ]]; then
    apt_opts+=(-o "APT::Sandbox::User=root")
fi

log "apt-get update ($mirror $suite, private config in $work)"
apt-get "${apt_opts[@]}" -q update >&2
log "apt-get download linux-libc-dev/$suite"
(cd "$work/deb" && apt-get "${apt_opts[@]}" -q download "linux-libc-dev/$suite" >&2)

debs=("$work"/deb/linux-libc-dev_*.deb)
[[ -f ${debs[0]} ]] || { log "no linux-libc-dev .deb was downloaded"; exit 1; }
deb=${debs[0]}
version=$(dpkg-deb -f "$deb" Version)

# Unpack next to DEST, then move into place, so DEST is either complete or absent.
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$dest.partial.XXXXXX")
dpkg-deb -x "$deb" "$tmp"
[[ -f "$tmp/$marker" ]] || { rm -rf "$tmp"; log "the package has no $marker"; exit 1; }
printf 'linux-libc-dev %s from %s %s, sha256 %s\n' "$version" "$mirror" "$suite" \
    "$(sha256sum "$deb" | cut -d' ' -f1)" >"$tmp/.passthru-source"
chmod 755 "$tmp"
[[ -d $dest ]] && rmdir "$dest" 2>/dev/null || true  # an empty DEST is fine
if [[ -e $dest ]]; then
    rm -rf "$tmp"
    log "$dest appeared meanwhile (another run?); not overwriting it"
    [[ -f "$dest/$marker" ]] || exit 1
else
    mv "$tmp" "$dest"
    log "linux-libc-dev $version unpacked into $dest"
fi
printf '%s\n' "$dest/usr/include"
