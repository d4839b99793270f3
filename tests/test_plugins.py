"""The shipped hook plugins, installed from plugins/ into the venv, behind a running server:
zeros for exactly the pfns they name, never a source read there, the slot's rules over
the socket, and reloads on request and on SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

from dumpd.client import RemoteError
from dumpd.hooks.contract import ENTRY_POINT_GROUP
from tests import daemon
from tests.daemon import (
    info_json,
    log_lines,
    ok,
    one_line_error,
    run,
    served,
    server_pid,
    stats_json,
)
from tests.dumps import file_bytes
from tests.plugindist import write_distribution
from tests.servers import client_of, serving
from tests.views import (
    BALLOONED,
    PAGE,
    ZERO_PFNS,
    expected_view,
    pfns_read,
    read_all,
    record_reads,
    streamed_dump,
)


def balloon_text(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "balloon.txt"
    path.write_text("# ballooned\n" + "".join(f"{a:#x}-{b:#x}\n" for a, b in BALLOONED[::-1]))
    return {"file": str(path)}


def balloon_bitmap(tmp_path: Path) -> dict[str, Any]:
    text = balloon_text(tmp_path)["file"]
    bitmap = tmp_path / "balloon.bitmap"
    subprocess.run([sys.executable, "-m", "dumpd_balloon", "convert", text, str(bitmap)],
                   check=True, capture_output=True)
    assert bitmap.read_bytes()[:8] == b"DUMPDBMP"
    return {"file": str(bitmap)}


def xen_stub(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "memtypes.txt"
    lines = [f"{a:#x}-{b:#x} mmio_dm\n" for a, b in BALLOONED]
    lines += ["0x40-0x4f ram_ro\n", "0x600+16 unused\n"]  # other types are RAM
    path.write_text("# HVMMEM types\n" + "".join(lines))
    return {"transport": "stub", "map": str(path)}


HOOKS: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "balloon-text": ("balloon", balloon_text),
    "balloon-bitmap": ("balloon", balloon_bitmap),
    "xen-stub": ("xen", xen_stub),
}


@pytest.mark.parametrize("dist", ["dumpd-balloon", "dumpd-memmap", "dumpd-xen"])
def test_plugins_are_installed_distributions(dist: str) -> None:
    """Found through the venv's metadata, not through a path into plugins/."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP)
             if ep.dist is not None and ep.dist.name == dist]
    assert [ep.name for ep in found] == [dist.removeprefix("dumpd-")]
    module = found[0].load().__module__
    assert not any(Path(p).resolve().parts[-2:-1] == ("plugins",) for p in sys.path if p)
    files = distribution(dist).files or []
    editable = distribution(dist).read_text("direct_url.json") or "{}"
    assert (any(str(f).startswith(f"{module}/") for f in files)
            or json.loads(editable).get("dir_info", {}).get("editable"))


@pytest.mark.parametrize("kind", ["elf", "raw"])
@pytest.mark.parametrize("hook_id", sorted(HOOKS))
async def test_listed_pfns_read_as_zeros_and_are_never_read(tmp_path: Path, kind: str,
                                                            hook_id: str) -> None:
    name, options = HOOKS[hook_id]
    path, size, segments = streamed_dump(tmp_path, kind)
    async with serving(tmp_path, path, hook=name, hook_options=options(tmp_path)
                       ) as server, client_of(server) as client:
        assert server.source is not None
        reads = record_reads(server.source)
        got = await read_all(client, size, 192 * 1024)
        again = await read_all(client, size, 64 * 1024)
        stats = await client.stats()
        info = await client.info()
    assert info["hook"] == name
    assert got == again == expected_view(path, segments, ZERO_PFNS)
    assert not pfns_read(reads, segments) & ZERO_PFNS
    held = {p for s in segments for p in range(s.paddr // PAGE, (s.paddr + s.filesz - 1)
                                               // PAGE + 1)}
    assert stats["pfns_asked"] == len(held)
    non_ram_bytes = sum(max(0, min((p + 1) * PAGE, s.paddr + s.filesz) - max(p * PAGE, s.paddr))
                        for s in segments for p in ZERO_PFNS)
    assert stats["source_bytes_read"] == sum(n for _, n in reads) == size - non_ram_bytes


async def test_ebusy_and_swapping_hooks_over_the_socket(tmp_path: Path) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path, hook="xen", hook_options=xen_stub(tmp_path)
                       ) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as busy:
            await client.hook_register("balloon", balloon_text(tmp_path))
        before = await client.read(0x30 * PAGE, 16)
        assert await client.hook_unregister() == {"hook": "xen"}
        unhooked = await client.read(0x30 * PAGE, 16)
        assert await client.hook_register("balloon", balloon_text(tmp_path)) == {
            "hook": "balloon"}
        rehooked = await client.read(0x30 * PAGE, 16)
        info = await client.info()
    assert (busy.value.code, busy.value.message) == (
        "EBUSY", "hook 'xen' is registered; unregister it first")
    assert before == rehooked == bytes(16)
    assert unhooked == file_bytes(path, 0x30 * PAGE, 16)
    assert (info["hook"], info["hook_generation"]) == ("balloon", 3)


async def test_a_bad_registration_names_the_problem(tmp_path: Path) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as bad:
            await client.hook_register("balloon", {"file": str(tmp_path / "nope")})
        with pytest.raises(RemoteError) as unknown:
            await client.hook_register("xen", {"transport": "stub", "bogus": 1})
        info = await client.info()
    assert (bad.value.code, bad.value.message) == (
        "EINVAL", f"balloon: {tmp_path / 'nope'}: cannot read: No such file or directory")
    assert unknown.value.code == "EINVAL" and "bogus" in unknown.value.message
    assert (info["hook"], info["hook_generation"]) == (None, 0)


def rewrite(hook_id: str, data_file: Path, tmp_path: Path, listed: str) -> None:
    """Replace the hook's data file (never in place) so that it lists `listed`."""
    data_file.unlink()
    if hook_id == "xen-stub":
        data_file.write_text(f"{listed} mmio_dm\n")
    elif hook_id == "balloon-text":
        data_file.write_text(f"{listed}\n")
    else:
        text = tmp_path / "new.txt"
        text.write_text(f"{listed}\n")
        subprocess.run([sys.executable, "-m", "dumpd_balloon", "convert", str(text),
                        str(data_file)], check=True, capture_output=True)


@pytest.mark.parametrize("hook_id", sorted(HOOKS))
async def test_reload_swaps_the_data_and_a_bad_file_keeps_the_old(tmp_path: Path,
                                                                  hook_id: str) -> None:
    name, make = HOOKS[hook_id]
    path, _, _ = streamed_dump(tmp_path, "raw")
    options = make(tmp_path)
    data_file = Path(options.get("map") or options["file"])
    page_31, page_40 = 0x31 * PAGE, 0x40 * PAGE
    async with serving(tmp_path, path, hook=name, hook_options=options
                       ) as server, client_of(server) as client:
        first = (await client.read(page_31, 8), await client.read(page_40, 8))
        rewrite(hook_id, data_file, tmp_path, "0x40")
        reloaded = await client.hook_reload()
        second = (await client.read(page_31, 8), await client.read(page_40, 8))
        data_file.unlink()
        data_file.write_text("0x10-0x5 mmio_dm\n" if name == "xen" else "0x10-0x5\n")
        with pytest.raises(RemoteError) as bad:
            await client.hook_reload()
        kept = (await client.read(page_31, 8), await client.read(page_40, 8))
        stats, info = await client.stats(), await client.info()
    real_31, real_40 = file_bytes(path, page_31, 8), file_bytes(path, page_40, 8)
    assert first == (bytes(8), real_40)
    assert reloaded == {"hook": name, "hook_generation": 2}
    assert second == kept == (real_31, bytes(8))
    assert bad.value.code == "EINVAL"
    assert bad.value.message.startswith("reload failed, old data kept: ")
    assert f"{data_file}:1: END 0x5 is below START 0x10" in bad.value.message
    assert (stats["hook_reloads"], stats["hook_reload_failures"]) == (1, 1)
    assert info["hook_generation"] == 2


async def test_reload_without_a_hook_or_without_data(tmp_path: Path) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as empty:
            await client.hook_reload()
        await client.hook_register("none", {})
        with pytest.raises(RemoteError) as nodata:
            await client.hook_reload()
    assert (empty.value.code, empty.value.message) == ("EINVAL", "no hook is registered")
    assert (nodata.value.code, nodata.value.message) == (
        "ENOSYS", "hook 'none' has no data to reload")


def test_sighup_and_the_hook_commands_on_a_real_daemon(tmp_path: Path) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    balloon = balloon_text(tmp_path)["file"]
    with served(tmp_path, path, "--hook", "balloon", "--hook-option", f"file={balloon}"
                ) as sock:
        zero = run("read", str(0x31 * PAGE), "8", "--socket", sock).stdout
        Path(balloon).write_text("0x40\n")
        os.kill(server_pid(sock), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while stats_json(sock)["hook_reloads"] != 1:
            assert time.monotonic() < deadline, "SIGHUP did not reload the hook"
            time.sleep(0.02)
        after = run("read", str(0x31 * PAGE), "8", "--socket", sock).stdout
        reload_out = ok("hook", "reload", "--socket", sock)
        unregister_out = ok("hook", "unregister", "--socket", sock)
        again_out = ok("hook", "unregister", "--socket", sock)
        register_out = ok("hook", "register", "xen", "--hook-option", "transport=stub",
                          "--hook-option", "delay_ms=0", "--socket", sock)
        busy = run("hook", "register", "none", "--socket", sock)
        info = json.loads(ok("info", "--json", "--socket", sock))
    assert zero == bytes(8)
    assert after == file_bytes(path, 0x31 * PAGE, 8)
    assert reload_out == "hook 'balloon' reloaded its data (generation 3)\n"
    assert unregister_out == "hook 'balloon' unregistered\n"
    assert again_out == "no hook was registered\n"
    assert register_out == "hook 'xen' registered\n"
    assert (busy.returncode, busy.stderr) == (
        1, b"dumpd: EBUSY: hook 'xen' is registered; unregister it first\n")
    assert (info["hook"], info["hook_generation"]) == ("xen", 5)
    log = (tmp_path / "serve.log").read_text()
    assert log.count("reloaded its data") == 2  # SIGHUP's and `hook reload`'s, once each
    assert ": INFO: hook balloon reloaded its data (generation 2), asked by SIGHUP\n" in log


# -- two distributions, one name ----------------------------------------------------------

IMPOSTOR = '''
class AllHoles:
    """Calls every pfn not RAM: a read shows at once which plugin answered."""

    def pfn_is_ram(self, pfn):
        return 0


def create(options):
    return AllHoles()
'''


def real(name: str) -> str:
    """`DIST VERSION (TARGET)` of the installed distribution dumpd-NAME."""
    dist = distribution(f"dumpd-{name}")
    (ep,) = (ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)
    return f"{dist.name} {dist.version} ({ep.value})"


@pytest.fixture
def impostor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The distribution `impostor` 1.0, declaring `balloon`, installed for the commands
    (on their PYTHONPATH) and for this process; its `DIST VERSION (TARGET)`."""
    site = write_distribution(tmp_path / "site", "impostor", "impostor_hooks", IMPOSTOR,
                              {"balloon": "impostor_hooks:create"}, version="1.0")
    monkeypatch.setitem(daemon.ENV, "PYTHONPATH", str(site))
    monkeypatch.syspath_prepend(str(site))
    return "impostor 1.0 (impostor_hooks:create)"


def ambiguous(impostor: str) -> str:
    return (f"hook 'balloon' is provided by 2 distributions: {real('balloon')}, {impostor}; "
            "choose one with hook.distribution (--hook-distribution DIST)")


def test_plugins_lists_both_providers_of_a_name(impostor: str) -> None:
    balloon = distribution("dumpd-balloon")
    rows = [line for line in ok("plugins").splitlines() if line.startswith("balloon ")]
    assert rows == [
        f"balloon      dumpd-balloon {balloon.version}  (dumpd_balloon:create)  also provided "
        "by impostor 1.0",
        f"balloon      impostor 1.0  (impostor_hooks:create)  also provided by dumpd-balloon "
        f"{balloon.version}",
    ]


def test_serve_refuses_an_ambiguous_hook_until_the_distribution_is_named(
        tmp_path: Path, impostor: str) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    hook = ["--hook", "balloon", "--hook-option", f"file={balloon_text(tmp_path)['file']}"]
    refused = run("serve", "--source", path, "--socket", str(tmp_path / "s.sock"), *hook)
    assert one_line_error(refused, 2) == f"dumpd: [hook] {ambiguous(impostor)}"
    assert not (tmp_path / "s.sock").exists()
    config = tmp_path / "dumpd.toml"
    config.write_text('[hook]\ndistribution = "dumpd_Balloon"\n')  # as pip compares names
    for how in (["--hook-distribution", "dumpd-balloon"], ["-c", str(config)]):
        with served(tmp_path, path, *hook, *how) as sock:
            held = run("read", str(0x20 * PAGE), str(3 * PAGE), "--socket", sock).stdout
            hook_name = info_json(sock)["hook"]
        # the real plugin: pfn 0x20 is RAM, 0x21 and 0x22 are ballooned
        assert held == file_bytes(path, 0x20 * PAGE, PAGE) + bytes(2 * PAGE)
        assert hook_name == "balloon"
    with served(tmp_path, path, *hook, "--hook-distribution", "impostor") as sock:
        assert run("read", str(0x20 * PAGE), str(PAGE), "--socket", sock).stdout == bytes(PAGE)


def test_hook_register_of_an_ambiguous_name_over_the_socket(tmp_path: Path,
                                                            impostor: str) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    option = ["--hook-option", f"file={balloon_text(tmp_path)['file']}"]
    with served(tmp_path, path) as sock:
        refused = run("hook", "register", "balloon", *option, "--socket", sock)
        wrong = run("hook", "register", "balloon", *option, "--hook-distribution", "dumpd-xen",
                    "--socket", sock)
        before = info_json(sock)
        registered = ok("hook", "register", "balloon", *option,
                        "--hook-distribution", "dumpd-balloon", "--socket", sock)
        held = run("read", str(0x20 * PAGE), str(2 * PAGE), "--socket", sock).stdout
    assert one_line_error(refused, 1) == f"dumpd: EINVAL: {ambiguous(impostor)}"
    assert one_line_error(wrong, 1) == (
        "dumpd: EINVAL: hook 'balloon' is not provided by distribution 'dumpd-xen'; it is "
        f"provided by {real('balloon')}, {impostor}")
    assert (before["hook"], before["hook_generation"]) == (None, 0)
    assert registered == "hook 'balloon' registered\n"
    assert held == file_bytes(path, 0x20 * PAGE, PAGE) + bytes(PAGE)


def test_the_log_names_the_distribution_that_answers(tmp_path: Path, impostor: str) -> None:
    """A name may be anyone's: the start-up line and each registration say which
    distribution (and version) provides the hook that now answers."""
    path, _, _ = streamed_dump(tmp_path, "raw")
    with served(tmp_path, path, "--hook", "balloon", "--hook-distribution", "impostor",
                *("--hook-option", f"file={balloon_text(tmp_path)['file']}")) as sock:
        pid = server_pid(sock)
        ok("hook", "unregister", "--socket", sock)
        assert ok("hook", "register", "balloon", "--hook-distribution", "dumpd-balloon",
                  "--hook-option", f"file={balloon_text(tmp_path)['file']}",
                  "--socket", sock) == "hook 'balloon' registered\n"
    lines = log_lines(tmp_path / "serve.log", pid)
    balloon = distribution("dumpd-balloon").version
    assert lines[0].endswith(", hook balloon (impostor 1.0)"), lines[0]
    registered = [line for line in lines if " registered with " in line]
    assert len(registered) == 1
    assert registered[0].startswith(f"INFO: hook balloon (dumpd-balloon {balloon}) "
                                    "registered with options {'file': "), registered[0]


async def test_hook_register_takes_an_optional_distribution(tmp_path: Path,
                                                            impostor: str) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server, client_of(server) as client:
        errors = []
        for params in (["balloon", {}, 5], ["balloon", {}, "impostor", 1], ["balloon", {}]):
            with pytest.raises(RemoteError) as bad:
                await client.call("hook.register", *params)
            errors.append((bad.value.code, bad.value.message))
        assert await client.hook_register("balloon", {}, "impostor") == {"hook": "balloon"}
        assert await client.read(0x20 * PAGE, 8) == bytes(8)
    assert errors == [
        ("EINVAL", "hook.register takes [name: str, options: map] or [name: str, options: "
                   "map, distribution: str]"),
        ("EINVAL", "hook.register takes 2 or 3 parameters, got 4"),
        ("EINVAL", ambiguous(impostor)),
    ]


def test_hook_check_of_an_ambiguous_name(tmp_path: Path, impostor: str) -> None:
    option = ["--hook-option", f"file={balloon_text(tmp_path)['file']}"]
    refused = run("hook", "check", "balloon", *option)
    checked = ok("hook", "check", "balloon", *option, "--hook-distribution", "dumpd-balloon")
    assert one_line_error(refused, 1) == (
        f"dumpd: conformance: hook 'balloon': entry point: {ambiguous(impostor)}")
    assert checked.splitlines()[0].startswith(
        f"hook 'balloon' (dumpd-balloon {distribution('dumpd-balloon').version}) conforms: ")


def test_one_distribution_twice_on_the_path_is_one_provider(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Two copies of one distribution (a stale copy further down the path) are not two
    providers: the first is the one imports find, and the only one listed."""
    dirs = [write_distribution(tmp_path / where, "dumpd-holes", "dumpd_holes", IMPOSTOR,
                               {"holes": "dumpd_holes:create"}, version=version)
            for where, version in (("first", "2.0"), ("stale", "1.0"))]
    monkeypatch.setitem(daemon.ENV, "PYTHONPATH", os.pathsep.join(map(str, dirs)))
    rows = [line for line in ok("plugins").splitlines() if line.startswith("holes ")]
    assert rows == ["holes        dumpd-holes 2.0  (dumpd_holes:create)"]
    path, _, _ = streamed_dump(tmp_path, "raw")
    with served(tmp_path, path, "--hook", "holes") as sock:
        assert info_json(sock)["hook"] == "holes"


def test_a_distribution_without_a_hook_name_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "dumpd.toml"
    config.write_text('[hook]\ndistribution = "dumpd-balloon"\n')
    path, _, _ = streamed_dump(tmp_path, "raw")
    failed = run("serve", "-c", str(config), "--source", path,
                 "--socket", str(tmp_path / "dumpd.sock"))
    assert one_line_error(failed, 2) == (
        "dumpd: [hook] distribution 'dumpd-balloon' is set but no hook name (hook.name, --hook)")
