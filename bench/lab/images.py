"""What the lab boots: Debian's packages, the guest kernel, certificates, and the two
initramfs images (the guest's, which carries the capture kernel's inside it).

The capture image holds the tree `dumpd payload --into` makes (the same payload the
dracut module installs: there is no second list), busybox, the virtio modules,
capture.py, the mmap baseline and bench.echo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
PACKAGES = ("qemu-system-x86", "qemu-utils", "kexec-tools", "busybox-static", "cpio",
            "openssl", "gcc", "libc6-dev", "iproute2")
COMMANDS = ("qemu-system-x86_64", "kexec", "busybox", "cpio", "openssl", "gcc", "ss")
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk", "virtio_balloon", "failover", "net_failover",
           "virtio_net")
"""In load order: the disk, the balloon and the network of the lab's QEMU machine."""


class LabError(Exception):
    """The lab cannot run here; the message says why in one line."""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LabError(f"{' '.join(map(str, command[:3]))}: exit {done.returncode}: {last[0]}")
    return done.stdout


def install_packages() -> None:
    """Debian's packages the lab needs, installed with apt-get when one is missing."""
    missing = [c for c in COMMANDS if shutil.which(c) is None
               and not Path("/usr/sbin", c).exists() and not Path("/sbin", c).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise LabError(f"{', '.join(missing)} missing and apt-get cannot install them here "
                       "(needs root on Debian)")
    run("apt-get", "update", "-qq")
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES)


def guest_kernel(cache: Path) -> tuple[Path, Path, str]:
    """Debian's current linux-image-*-amd64, downloaded once into `cache` and unpacked:
    (vmlinuz, the modules directory, the version)."""
    depends = run("apt-cache", "depends", "linux-image-amd64")
    match = re.search(r"Depends: (linux-image-(\S+)-amd64)", depends)
    if match is None:
        raise LabError("apt-cache names no linux-image-*-amd64 for linux-image-amd64")
    package, version = match[1], f"{match[2]}-amd64"
    root = cache / package
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob(f"{package}_*.deb"):
            old.unlink()
        run("apt-get", "download", package, cwd=cache)
        deb = next(cache.glob(f"{package}_*.deb"))
        root.mkdir(exist_ok=True)
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(root), "--wildcards", "./boot/vmlinuz-*",
                        *(f"*/{m}.ko" for m in MODULES)], stdin=tar.stdout, check=True)
        tar.wait()
        deb.unlink()
    return vmlinuz, root / "lib" / "modules" / version, version


def certificates(pki: Path) -> None:
    """A throwaway CA, a server certificate for 10.0.2.15 and 127.0.0.1, a client one."""
    if (pki / "client.pem").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ossl = "openssl"
    run(ossl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", pki / "ca.key", "-out", pki / "ca.pem", "-days", "30",
        "-subj", "/CN=dumpd lab CA")
    for name, extra in (("server", "subjectAltName=IP:10.0.2.15,IP:127.0.0.1"),
                        ("client", "extendedKeyUsage=clientAuth")):
        ext = pki / f"{name}.cnf"
        ext.write_text(extra + "\n")
        run(ossl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", pki / f"{name}.key", "-out", pki / f"{name}.csr",
            "-subj", f"/CN=dumpd lab {name}")
        run(ossl, "x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.pem",
            "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "30",
            "-out", pki / f"{name}.pem", "-extfile", ext)


def _modules(root: Path, modules: Path) -> None:
    lab = root / "lab" / "modules"
    lab.mkdir(parents=True)
    for name in MODULES:
        shutil.copy(next(modules.rglob(f"{name}.ko")), lab / f"{name}.ko")
    (root / "lab" / "modules.txt").write_text("".join(f"{m}\n" for m in MODULES))


def _busybox(root: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    init = root / "init"
    shutil.copy(HERE / "init.sh", init)
    init.chmod(0o755)


def _with_libraries(root: Path, binary: Path) -> None:
    """`binary` and the shared libraries `ldd` names for it, at their own paths."""
    dest = root / str(binary).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, dest)
    for path in re.findall(r"(/\S+) \(0x", run("ldd", binary)):
        lib = root / path.lstrip("/")
        lib.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), lib)


def _cpio(root: Path, out: Path) -> None:
    subprocess.run(f"find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > {out}",
                   shell=True, cwd=root, check=True)


def lab_config(pki: str, overrides: Sequence[str] = ()) -> str:
    """The shipped crash-kernel configuration, with TCP and TLS for the host, and each
    `SECTION.KEY=VALUE` of `overrides` (TOML values) set in it."""
    text = (BENCH.parent / "systemd" / "dumpd-kdump.toml").read_text()
    text = text.replace("[server]\n", f'[server]\ntcp = "10.0.2.15:7300"\n'
                        f'tls_cert = "{pki}/server.pem"\n'
                        f'tls_key = "{pki}/server.key"\ntls_client_ca = "{pki}/ca.pem"\n', 1)
    for override in overrides:
        name, _, value = override.partition("=")
        section, _, key = name.partition(".")
        if not (section and key and value):
            raise LabError(f"--serve-option {override!r}: expected SECTION.KEY=VALUE")
        line = re.compile(rf"^{re.escape(key)} = .*$", re.M)
        head = text.find(f"[{section}]\n")
        if head < 0:
            text += f"\n[{section}]\n{key} = {value}\n"
        elif line.search(text, head):
            text = text[:head] + line.sub(f"{key} = {value}", text[head:], count=1)
        else:
            cut = head + len(section) + 3
            text = text[:cut] + f"{key} = {value}\n" + text[cut:]
    return text


def capture_image(work: Path, modules: Path, pki: Path, overrides: Sequence[str] = (),
                  host_fetches: int = 1) -> Path:
    """The capture kernel's initramfs: the payload, busybox, modules and the lab's side
    (its dumpd waits for `host_fetches` verified fetches from the host)."""
    root = work / "capture-root"
    shutil.rmtree(root, ignore_errors=True)
    run(sys.executable, "-m", "dumpd", "payload", "--into", root)
    _busybox(root)
    _modules(root, modules)
    lab = root / "lab"
    shutil.copy(HERE / "capture.py", lab / "capture.py")
    run("gcc", "-static", "-O2", "-o", lab / "mmapcopy", HERE / "mmapcopy.c")
    (lab / "bench").mkdir()
    for name in ("__init__.py", "common.py", "echo.py"):
        shutil.copy(BENCH / name, lab / "bench" / name)
    shutil.copytree(pki, lab / "pki", ignore=shutil.ignore_patterns("*.csr", "*.srl", "*.cnf",
                                                                    "client.*", "ca.key"))
    (lab / "dumpd.toml").write_text(lab_config("/lab/pki", overrides))
    (lab / "host-fetches").write_text(f"{host_fetches}\n")
    image = work / "capture.img"
    _cpio(root, image)
    return image


def guest_image(work: Path, vmlinuz: Path, modules: Path, capture: Path,
                capture_args: str) -> Path:
    """The first kernel's initramfs: busybox, kexec, the modules, and what `kexec -p`
    loads (the kernel and the capture image)."""
    root = work / "guest-root"
    shutil.rmtree(root, ignore_errors=True)
    _busybox(root)
    _modules(root, modules)
    kexec = Path(shutil.which("kexec") or "/usr/sbin/kexec")
    _with_libraries(root, kexec)
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    os.symlink(str(kexec), root / "usr" / "bin" / "kexec")
    shutil.copy(vmlinuz, root / "lab" / "vmlinuz")
    shutil.copy(capture, root / "lab" / "capture.img")
    (root / "lab" / "capture-args").write_text(capture_args)
    image = work / "guest.img"
    _cpio(root, image)
    return image


def unpacked_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
