#!/bin/bash
# dracut module "dumpd": dumpd in the kdump initramfs of Fedora and RHEL (mkdumprd,
# kdumpctl). In the capture kernel it serves /proc/vmcore before kdump's own capture
# runs; when dumpd ends, kdump-capture.service saves the dump as /etc/kdump.conf says
# (or not) and does its final_action (reboot by default). docs/crash-kernel.md.
#
# Enable: copy this directory to /usr/lib/dracut/modules.d/99dumpd, dumpd's crash-kernel
# configuration to /etc/dumpd/dumpd-kdump.toml (systemd/dumpd-kdump.toml), add
# `dracut_args --add dumpd` to /etc/kdump.conf, and rebuild: `kdumpctl rebuild`.
#
# The files come from `dumpd payload`, the one list of what runs dumpd: it is built
# with `--into` (stripped, compiled, zipped) and every file `--list` names is installed
# from that tree. DUMPD_PYTHON names the interpreter that has dumpd (default python3).
#
# shellcheck disable=SC2154  # initdir, moddir, systemdsystemunitdir: dracut sets them

# The interpreter whose dumpd (and whose own files) go into the initramfs.
dumpd_python() {
    echo "${DUMPD_PYTHON:-python3}"
}

# dumpd's configuration in the capture kernel.
dumpd_config() {
    echo "${DUMPD_KDUMP_CONFIG:-/etc/dumpd/dumpd-kdump.toml}"
}

check() {
    "$(dumpd_python)" -c 'import dumpd.payload' 2> /dev/null || return 1
    [[ -f "$(dumpd_config)" ]] || return 1
    # Only when asked for (dracut_args --add dumpd): never by default.
    return 255
}

depends() {
    echo systemd
    return 0
}

# The files the configuration names (TLS certificates and keys, a hook's data such as
# the balloon list): absolute paths of files that exist, one a line.
dumpd_config_files() {
    "$(dumpd_python)" - "$1" << 'PY'
import os, sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
server, hook = config.get("server", {}), config.get("hook", {})
named = [server.get(key, "") for key in ("tls_cert", "tls_key", "tls_client_ca")]
named += [v for v in hook.get("options", {}).values() if isinstance(v, str)]
for path in dict.fromkeys(named):
    if path and os.path.isabs(path) and os.path.isfile(path):
        print(path)
PY
}

install() {
    local python config stage list src dest file
    python=$(dumpd_python)
    config=$(dumpd_config)
    stage=$(mktemp -d -p "${DRACUT_TMPDIR:-${TMPDIR:-/tmp}}" dumpd.XXXXXX) || return 1
    list="$stage.list"
    if ! "$python" -m dumpd payload --into "$stage/root" > "$stage.out" \
        || ! "$python" -m dumpd payload --list > "$list"; then
        dfatal "dumpd: \`$python -m dumpd payload\` failed"
        return 1
    fi
    dinfo "dumpd: $(cat "$stage.out")"
    while IFS=$'\t' read -r src dest; do
        [[ -n $src && -n $dest ]] || continue
        file=$dest
        case $dest in
            *.zip/*) file="${dest%%.zip/*}.zip" ;; # a member of the stdlib's zip
        esac
        [[ -e "$initdir/$file" || -L "$initdir/$file" ]] && continue # a library, the zip
        if [[ -L "$stage/root/$file" ]]; then # python3.11 beside python3: a link again
            ln_r "$(dirname "/$file")/$(readlink "$stage/root/$file")" "/$file"
        else
            inst_simple "$stage/root/$file" "/$file" || return 1
        fi
    done < "$list"
    chmod 0755 "$initdir/usr/bin/dumpd"
    inst_simple "$config" /etc/dumpd/dumpd.toml
    while read -r file; do
        inst_simple "$file" "$file"
    done < <(dumpd_config_files "$config")
    inst_simple "$moddir/dumpd-kdump.service" "$systemdsystemunitdir/dumpd-kdump.service"
    "${SYSTEMCTL:-systemctl}" -q --root "$initdir" add-wants initrd.target dumpd-kdump.service
    rm -rf "$stage" "$stage.list" "$stage.out"
}
