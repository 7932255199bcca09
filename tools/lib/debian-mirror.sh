# Sourced by tools/fetch-headers.sh and tools/realkernel/*.sh (not run on its own).
#
# debian_mirror_uri: the machine's Debian mirror, the first non-security URI in its apt
# sources (deb822 debian.sources first, then a one-line sources.list); prints nothing when
# the machine has neither, so the caller picks its own fallback or error.
debian_mirror_uri() {
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
    printf '%s' "$uri"
}
