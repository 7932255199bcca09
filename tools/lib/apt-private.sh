# Sourced by tools/fetch-headers.sh and tools/realkernel/*.sh (not run on its own).
#
# apt_private_init WORK SUITE MIRROR: a private apt configuration in WORK (its own
# sources.list, lists and cache) listing SUITE and its base suite (trixie-backports and
# trixie) on MIRROR, signed by Debian's archive keyring. It sets the array apt_opts; pass it
# to apt-get / apt-cache. The machine's own apt sources and state are never touched.
# apt_private_download SPEC DIR: apt-get download SPEC into the empty DIR; prints the .deb.
apt_private_keyring=/usr/share/keyrings/debian-archive-keyring.gpg

apt_private_init() {
    local work=$1 suite=$2 mirror=${3%/}
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    printf 'deb [signed-by=%s] %s %s main\ndeb [signed-by=%s] %s %s main\n' \
        "$apt_private_keyring" "$mirror" "$suite" \
        "$apt_private_keyring" "$mirror" "${suite%%-*}" >"$work/sources.list"
    apt_opts=(
        -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
        -o "Debug::NoLocking=1" -o "Acquire::Languages=none"
    )
    # apt drops privileges to _apt for downloads, which cannot write into a root-only temp dir.
    if [[ $(id -u) == 0 ]]; then apt_opts+=(-o "APT::Sandbox::User=root"); fi
    apt-get "${apt_opts[@]}" -q update >&2
}

apt_private_download() {
    (cd "$2" && apt-get "${apt_opts[@]}" -q download "$1" >&2) || return 1
    local debs=("$2"/*.deb)
    [[ -f ${debs[0]} ]] || { printf 'no .deb was downloaded for %s\n' "$1" >&2; return 1; }
    printf '%s\n' "${debs[0]}"
}
