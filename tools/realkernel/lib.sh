# Sourced by tools/realkernel/*.sh (not run on its own): what the lanes share.
#
# need_packages PKG:PROBE...: installs (apt-get) each Debian package PKG whose PROBE is
# missing; PROBE is a command name or an absolute path. Fails naming the packages it could
# not install.
need_packages() {
    local spec pkg probe missing=()
    for spec in "$@"; do
        pkg=${spec%%:*} probe=${spec#*:}
        if [[ $probe == /* ]]; then [[ -e $probe ]] && continue
        else command -v "$probe" >/dev/null && continue; fi
        missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    printf 'lane: installing %s (apt-get)\n' "${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; }; then
        printf 'lane: could not install the Debian packages %s\n' "${missing[*]}" >&2
        return 1
    fi
}

# need_lane_tools: what booting a lane's guest needs on the host (QEMU, a static busybox for
# the initramfs, and what fetching Debian packages with a private apt config needs).
need_lane_tools() {
    need_packages qemu-system-x86:qemu-system-x86_64 xz-utils:xz dpkg:dpkg-deb \
        debian-archive-keyring:/usr/share/keyrings/debian-archive-keyring.gpg || return 1
    # busybox-static's /bin/busybox is static (ldd fails on it); busybox's is not.
    if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
        need_packages busybox-static:/nonexistent/busybox-static || return 1
    fi
}
