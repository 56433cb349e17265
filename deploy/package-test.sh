#!/usr/bin/env bash
# Builds the gated Debian package (cargo deb -p gated) and checks it:
#  1. its file list: the binaries, the systemd unit, the example config (and
#     no live config), the examples and docs;
#  2. its control data: dependencies, conffiles, maintainer scripts;
#  3. the extracted package (dpkg -x into a temporary root): gated --version,
#     gated/gatectl check-config on the shipped example, gatectl keygen;
#  4. when run as root on a machine where gated is not installed (CI), a real
#     `dpkg -i`, the user and folders the postinst makes, a reinstall, and
#     `dpkg --purge`; without systemd as PID 1, which the postinst must survive.
#     PACKAGE_TEST_INSTALL=0 skips this step, =1 makes it mandatory.
# Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

checks=0
say() { printf 'package-test: %s\n' "$*"; }
fail() {
    printf 'package-test: FAIL: %s\n' "$*" >&2
    exit 1
}
# check DESCRIPTION COMMAND...: runs COMMAND, fails with DESCRIPTION.
check() {
    local what=$1
    shift
    if "$@"; then
        checks=$((checks + 1))
    else
        fail "$what"
    fi
}

cargo deb --version >/dev/null 2>&1 || fail "cargo-deb is not installed: cargo install --locked cargo-deb"
command -v dpkg-deb >/dev/null 2>&1 || fail "dpkg-deb is not installed"

work=$(mktemp -d "${TMPDIR:-/tmp}/gated-package-test.XXXXXX")
installed_by_us=false
cleanup() {
    if $installed_by_us; then
        dpkg --purge gated >/dev/null 2>&1 || true
        rm -rf /etc/gated /var/lib/gated
        userdel gated >/dev/null 2>&1 || true
        groupdel gated >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- 1. build -------------------------------------------------------------------
say "building the package (cargo deb -p gated)"
cargo deb -p gated --locked --output "$work/" >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2
    fail "cargo deb -p gated failed"
}
debs=("$work"/*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || fail "expected one .deb in $work, found: ${debs[*]}"
deb=${debs[0]}
version=$(dpkg-deb -f "$deb" Version)
say "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

# --- 2. file list ---------------------------------------------------------------
dpkg-deb -c "$deb" >"$work/contents"
paths=$(awk '{print $6}' "$work/contents" | sed 's#^\./#/#')
has() { grep -qx -- "$1" <<<"$paths"; }
lacks() { ! grep -qx -- "$1" <<<"$paths"; }
# "MODE OWNER" of a packaged file, owner as uid/gid (dpkg-deb prints 0/0 or root/root).
mode_of() { awk -v p="./${1#/}" '$6 == p {sub("root/root", "0/0", $2); print $1 " " $2}' "$work/contents"; }

for path in \
    /usr/bin/gated \
    /usr/bin/gatectl \
    /etc/gated/gated.toml.example \
    /usr/share/doc/gated/copyright \
    /usr/share/doc/gated/TECHNICIAN.md \
    /usr/share/doc/gated/README.md \
    /usr/share/doc/gated/examples/99-gate.rules \
    /usr/share/doc/gated/examples/mosquitto-bridge.conf \
    /usr/share/doc/gated/examples/mosquitto-gate.acl \
    /usr/share/gated/proto/gate/v1/gate.proto \
    /usr/bin/hw-sim \
    /usr/share/bash-completion/completions/gatectl \
    /usr/share/zsh/vendor-completions/_gatectl \
    /usr/share/fish/vendor_completions.d/gatectl.fish \
    /usr/share/bash-completion/completions/gated \
    /usr/share/bash-completion/completions/hw-sim; do
    check "the package lacks $path" has "$path"
done
# Manual pages, compressed or not, for each tool and a subcommand.
for page in gated gatectl gatectl-identity-import gatectl-lookup hw-sim hw-sim-idcard; do
    check "the package lacks the manual page $page.1" \
        bash -c 'grep -qx "/usr/share/man/man1/$1.1\(.gz\)\{0,1\}" <<<"$2"' _ "$page" "$paths"
done
unit=""
for candidate in /lib/systemd/system/gated.service /usr/lib/systemd/system/gated.service; do
    if has "$candidate"; then unit=$candidate; fi
done
check "the package has no systemd unit gated.service" test -n "$unit"
check "/usr/bin/gated is not root-owned 0755" test "$(mode_of /usr/bin/gated)" = "-rwxr-xr-x 0/0"
check "/usr/bin/gatectl is not root-owned 0755" test "$(mode_of /usr/bin/gatectl)" = "-rwxr-xr-x 0/0"
# A live config would make the unit start (and fail) on a box not yet set up;
# keys and state are made on the box, never shipped.
for path in /etc/gated/gated.toml /etc/gated/site.key; do
    check "the package ships $path" lacks "$path"
done
check "the package ships files under /var/lib" bash -c '! grep -q "^/var/lib/." <<<"$1"' _ "$paths"
check "the package installs udev rules (they are site-specific examples)" \
    bash -c '! grep -q "udev/rules.d/" <<<"$1"' _ "$paths"

# --- control data ---------------------------------------------------------------
dpkg-deb -e "$deb" "$work/control"
check "Package is not gated" test "$(dpkg-deb -f "$deb" Package)" = gated
check "Depends lacks passwd (useradd)" grep -q 'passwd' <<<"$(dpkg-deb -f "$deb" Depends)"
check "the example config is not a conffile" grep -qx /etc/gated/gated.toml.example "$work/control/conffiles"
for script in postinst postrm; do
    check "no $script" test -x "$work/control/$script"
    check "$script is not valid sh" sh -n "$work/control/$script"
    check "$script still holds #DEBHELPER#" bash -c '! grep -q "#DEBHELPER#" "$1"' _ "$work/control/$script"
done
check "postinst does not create the gated user" grep -q 'useradd --system' "$work/control/postinst"
# The systemd fragments go after the user and folders exist, and once only.
first_fragment=$(grep -n 'Automatically added by cargo-deb' "$work/control/postinst" | head -n1 | cut -d: -f1)
useradd_line=$(grep -n 'useradd --system' "$work/control/postinst" | head -n1 | cut -d: -f1)
check "postinst runs cargo-deb's systemd fragments before creating the user" \
    test "${first_fragment:-0}" -gt "${useradd_line:-0}"
check "postinst touches systemd without checking it runs" \
    bash -c 'grep -q "/run/systemd/system" "$1" || ! grep -q "systemctl" "$1"' _ "$work/control/postinst"

# --- 3. the extracted package ---------------------------------------------------
root="$work/root"
dpkg-deb -x "$deb" "$root"
check "the packaged unit differs from deploy/gated.service" cmp -s "$root$unit" deploy/gated.service
check "the packaged example differs from config/gated.example.toml" \
    cmp -s "$root/etc/gated/gated.toml.example" config/gated.example.toml

gated_version=$("$root/usr/bin/gated" --version)
check "gated --version said '$gated_version', not 'gated ${version%%-*}'" test "$gated_version" = "gated ${version%%-*}"
hw_sim_help=$("$root/usr/bin/hw-sim" --help)
check "the packaged hw-sim --help lists no idcard simulator" grep -q idcard <<<"$hw_sim_help"
gatectl_version=$("$root/usr/bin/gatectl" --version)
check "gatectl --version said '$gatectl_version'" test "$gatectl_version" = "gatectl ${version%%-*}"

example="$root/etc/gated/gated.toml.example"
check "gated check-config rejects the shipped example" "$root/usr/bin/gated" check-config "$example" >"$work/check.out"
check "gated check-config did not say ok" grep -qx "$example: ok" "$work/check.out"
check "gatectl check-config rejects the shipped example" "$root/usr/bin/gatectl" check-config "$example" >/dev/null
# ...and really validates: a misspelt key is exit 64 with its line.
sed 's/^unit_id = /unitid = /' "$example" >"$work/typo.toml"
set +e
"$root/usr/bin/gated" check-config "$work/typo.toml" >/dev/null 2>"$work/typo.err"
typo_status=$?
set -e
check "check-config on a misspelt key exited $typo_status, not 64" test "$typo_status" -eq 64
check "check-config did not name the misspelt key" grep -q 'devices.gate.unitid: unknown key' "$work/typo.err"

"$root/usr/bin/gatectl" keygen "$work/site.key" >/dev/null
check "gatectl keygen did not make a 0600 key" test "$(stat -c %a "$work/site.key")" = 600

# --- 4. a real installation (root, gated not installed) -----------------------------
can_install() {
    [ "$(id -u)" -eq 0 ] || { echo "not root"; return 1; }
    command -v dpkg >/dev/null 2>&1 || { echo "no dpkg"; return 1; }
    if dpkg-query -W -f='${Status}' gated 2>/dev/null | grep -qv 'not-installed'; then
        echo "a gated package is already on this machine"
        return 1
    fi
    ! getent passwd gated >/dev/null || { echo "a user gated already exists"; return 1; }
    [ ! -e /etc/gated ] && [ ! -e /var/lib/gated ] || { echo "/etc/gated or /var/lib/gated exists"; return 1; }
}
mode=${PACKAGE_TEST_INSTALL:-auto}
why_not=$(can_install) || true
if [ "$mode" = 0 ]; then
    say "skipping the real installation (PACKAGE_TEST_INSTALL=0)"
elif [ -n "$why_not" ]; then
    [ "$mode" = 1 ] && fail "cannot install for real: $why_not"
    say "skipping the real installation: $why_not"
else
    say "installing for real (dpkg -i; systemd $([ -d /run/systemd/system ] && echo running || echo 'not running'))"
    installed_by_us=true
    dpkg -i "$deb" >"$work/install.log" 2>&1 || {
        cat "$work/install.log" >&2
        fail "dpkg -i failed"
    }
    check "dpkg does not list gated as installed" \
        test "$(dpkg-query -W -f='${Status}' gated)" = "install ok installed"
    check "postinst made no user gated" getent passwd gated >/dev/null
    check "user gated is not in group dialout" bash -c 'id -nG gated | tr " " "\n" | grep -qx dialout'
    check "user gated has a login shell" test "$(getent passwd gated | cut -d: -f7)" = /usr/sbin/nologin
    check "/var/lib/gated is not gated:gated 750" test "$(stat -c '%U:%G %a' /var/lib/gated)" = "gated:gated 750"
    check "/etc/gated is not root:gated 750" test "$(stat -c '%U:%G %a' /etc/gated)" = "root:gated 750"
    check "the unit is enabled on installation" test ! -e /etc/systemd/system/multi-user.target.wants/gated.service
    check "the installed gated does not run" /usr/bin/gated --version >/dev/null
    check "the installed example does not pass check-config" /usr/bin/gated check-config /etc/gated/gated.toml.example >/dev/null

    # Reinstall (the upgrade path of the scripts): idempotent.
    dpkg -i "$deb" >"$work/reinstall.log" 2>&1 || {
        cat "$work/reinstall.log" >&2
        fail "a second dpkg -i failed"
    }
    check "the reinstall changed /var/lib/gated" test "$(stat -c '%U:%G %a' /var/lib/gated)" = "gated:gated 750"

    # Purge removes the state, keeps the technician's site key.
    /usr/bin/gatectl keygen /etc/gated/site.key >/dev/null
    : >/var/lib/gated/gated.db
    dpkg --purge gated >"$work/purge.log" 2>&1 || {
        cat "$work/purge.log" >&2
        fail "dpkg --purge failed"
    }
    check "purge left /var/lib/gated" test ! -e /var/lib/gated
    check "purge left /usr/bin/gated" test ! -e /usr/bin/gated
    check "purge deleted the site key" test -f /etc/gated/site.key
    check "purge left the example config" test ! -e /etc/gated/gated.toml.example
fi

say "ok: $checks checks passed ($(basename "$deb"))"
