# Sourced by the install scripts: Debian packages, installed only when missing.
#   apt_missing PKG...   prints the packages not installed (one line, space-separated)
#   apt_install PKG...   installs the missing ones (one apt-get update per script run)
# As root on a fresh Debian machine, or through sudo when not root and sudo exists.
# The caller defines log() for its messages.

if [ "$(id -u)" -eq 0 ]; then apt_sudo=(); elif command -v sudo >/dev/null 2>&1; then apt_sudo=(sudo); else apt_sudo=(); fi
apt_updated=0

apt_missing() {
    local d missing=()
    for d in "$@"; do
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "ok installed" || missing+=("$d")
    done
    echo "${missing[*]}"
}

apt_install() {
    local missing
    read -r -a missing <<<"$(apt_missing "$@")"
    [ "${#missing[@]}" -gt 0 ] || return 0
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        "${apt_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    "${apt_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
