"""The server's life: open the source, register the hook, listen, serve, shut down.

`Server.start()` does everything that can fail because of the operator (and
raises StartupError with one line); `Server.serve_until_stopped()` runs until
`stop()` (or until a finish condition ends the job: `finish.py`);
`Server.shutdown()` stops accepting, lets running requests finish up to a deadline,
then closes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from typing import Any

from dumpd.config import Config
from dumpd.engine import Engine
from dumpd.engine.spans import SpanSender
from dumpd.errors import DumpdError, StartupError
from dumpd.hooks.contract import HookConfigError
from dumpd.hooks.discovery import load_plugin
from dumpd.hooks.slot import hook_label
from dumpd.ratelog import RateLimitedLog
from dumpd.server.connection import RpcConnection
from dumpd.server.deadlines import Clock, LoopClock
from dumpd.server.dispatch import Dispatcher, Peer, reload_hook
from dumpd.server.finish import Finish
from dumpd.server.listeners import (
    Credentials,
    bind_tcp,
    bind_unix,
    peer_credentials,
    supplementary_groups,
)
from dumpd.server.memory import fit
from dumpd.server.shared import ConnectionLimits, Served, Shared
from dumpd.server.systemd import Notifier, listen_fds
from dumpd.server.tls import TlsListeners, address, subject
from dumpd.sources import Source, open_source
from dumpd.tls import server_context

log = logging.getLogger("dumpd.server")

KiB, MiB = 1 << 10, 1 << 20
STATUS_PERIOD = 5.0  # seconds between STATUS= updates to systemd


def _address(sock: socket.socket) -> str:
    """Where a listening socket listens, for the log."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        return address(name)
    return name.decode() if isinstance(name, bytes) else str(name) or "an unnamed socket"


class Server:
    """One served dump: its source, engine, listeners and live connections."""

    def __init__(self, config: Config, given_page_size: int | None = None,
                 clock: Clock | None = None) -> None:
        """`given_page_size`: a page size the operator named (`--page-size`); a dump whose
        VMCOREINFO says another stops start-up (the pfns a hook is asked would differ).
        `clock`: what the connections' idle and send deadlines, and the shutdown deadline,
        are kept on (None: the running loop; tests pass a fake one)."""
        config, self._memory_note = fit(config)  # limits sized for the memory there is
        self.config = config
        self._clock = clock
        self._given_page_size = given_page_size
        self.source: Source | None = None
        self.engine: Engine | None = None
        self.finish = Finish(config.finish, self._finished)  # done, fetches, idle, deadline
        self.finished: str | None = None  # why it stops by itself (Finish), once it does
        self.shared = Shared(config.server.max_connections,
                             config.server.reply_budget_total_mib * MiB, self.finish)
        self.connections: set[Served] = self.shared.open  # served now
        self.refused = 0
        self._listeners: list[asyncio.AbstractServer] = []
        self._unix_path: str | None = None
        self._stop = asyncio.Event()
        self._admin_uids = {0, os.geteuid(), *config.server.admin_uids}
        self._allowed_uids = {*self._admin_uids, *config.server.allow_uids}
        self._allowed_gids = frozenset(config.server.allow_gids)
        self._refusals = RateLimitedLog(log)
        self._tls: TlsListeners | None = None  # TCP listeners speak TLS when configured
        self.notifier = Notifier()

    async def start(self) -> None:
        """Open the source, register the configured hook and start listening."""
        cfg = self.config
        if cfg.hook.distribution and not cfg.hook.name:
            raise StartupError(f"[hook] distribution {cfg.hook.distribution!r} is set but no "
                               "hook name (hook.name, --hook)")
        src = cfg.source
        self.source = open_source(src.path, src.kind, src.page_size, src.size or None,
                                  src.mmap, src.mmap_window_kib * 1024, src.mmap_windows,
                                  src.vmcoreinfo or None)
        given, found = self._given_page_size, self.source.page_size
        if given is not None and given != found:
            raise StartupError(f"{self.source.path}: --page-size {given}, but its VMCOREINFO "
                               f"says PAGESIZE={found}: give --page-size {found} or none")
        self.engine = Engine(self.source, cfg.engine)
        if self._memory_note:
            log.info("%s", self._memory_note)
        hook_shown = hook_label(None)
        if cfg.hook.name:
            try:
                hook, plugin = load_plugin(cfg.hook.name, cfg.hook.options,
                                         cfg.hook.distribution, self.engine.dump_memory)
            except (HookConfigError, DumpdError) as exc:
                raise StartupError(f"[hook] {exc}") from exc
            self.engine.register_hook(cfg.hook.name, hook, cfg.hook.options)
            hook_shown = f"{cfg.hook.name} ({plugin.provider})"
        srv = cfg.server
        dispatcher = Dispatcher(self.engine, srv.max_read_mib * MiB, self._live_stats,
                                srv.stream_window_mib * MiB, finish=self.finish)
        limits = ConnectionLimits(srv.max_frame_kib * KiB, srv.max_inflight,
                                  srv.reply_budget_mib * MiB, srv.max_streams,
                                  srv.stream_sendfile, srv.idle_timeout, srv.send_timeout,
                                  self._clock, srv.write_buffer_kib * KiB,
                                  srv.write_batch_kib * KiB)
        spans = SpanSender(self.engine)

        def factory() -> RpcConnection:  # served (or refused) once connection_made
            return RpcConnection(dispatcher, spans, limits, self.shared, self._authorize)

        if srv.tls_cert:  # before binding: a bad file leaves no socket behind
            context = server_context(srv.tls_cert, srv.tls_key, srv.tls_client_ca)
            self._tls = TlsListeners(context, factory, self._refused_tls, srv.max_connections)
        loop = asyncio.get_running_loop()
        sockets = self._activated() or self._bind()
        backlog = srv.max_connections  # else the loop listens again with its own 100
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                self._listeners.append(await loop.create_unix_server(factory, sock=sock,
                                                                     backlog=backlog))
            elif self._tls is not None:
                self._tls.serve(sock)
            else:
                self._listeners.append(await loop.create_server(factory, sock=sock,
                                                                backlog=backlog))
        tls = " (TLS)" if self._tls else ""
        where = " and ".join(_address(sock) + ("" if sock.family == socket.AF_UNIX else tls)
                             for sock in sockets)
        kind = self.source.kind
        if self.source.guess:  # one line says what is served and on what evidence
            kind = f'{kind} physical memory: {self.source.guess}, as kind = "raw"'
        log.info("serving %s (%s, %d bytes, page size %d) on %s, hook %s",
                 self.source.path, kind, self.source.size, self.source.page_size,
                 where, hook_shown)
        log.info("reading %s with %s: %s", self.source.path, self.source.read_path,
                 self.source.read_path_why)
        self.notifier.send("READY=1", f"STATUS={self.status()}", f"MAINPID={os.getpid()}")
        self.finish.start(self._clock or LoopClock())

    def _activated(self) -> list[socket.socket]:
        """The listening sockets systemd passed (socket activation), if any."""
        sockets: list[socket.socket] = []
        for fd, name in listen_fds():
            sock = socket.socket(fileno=fd)
            problem = None
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                problem = "is not a listening stream socket (ListenStream= in the .socket unit)"
            elif sock.family != socket.AF_UNIX and self._tls is None and not ipaddress.ip_address(
                    sock.getsockname()[0]).is_loopback:
                problem = (f"listens on {_address(sock)}: a non-loopback address needs TLS "
                           "(server.tls_cert, server.tls_key, server.tls_client_ca): anyone "
                           "who reaches the port could read the dump")
            if problem is not None:
                for other in [*sockets, sock]:
                    other.close()
                raise StartupError(f"socket activation: fd {fd} ({name}) {problem}")
            sockets.append(sock)
        return sockets

    def _bind(self) -> list[socket.socket]:
        """Listening sockets of our own, as configured."""
        srv = self.config.server
        if not (srv.socket or srv.tcp):  # an empty socket means TCP only
            raise StartupError("nothing to listen on: server.socket (--socket) is empty and "
                               "server.tcp (--tcp) is not set")
        sockets: list[socket.socket] = []
        try:
            if srv.socket:
                sockets.append(bind_unix(srv.socket, srv.max_connections))
                self._unix_path = srv.socket  # ours to remove from now on
            if srv.tcp:
                sockets.append(bind_tcp(srv.tcp, srv.max_connections))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def status(self) -> str:
        """One line for systemd's STATUS=: what is served, to whom, how much."""
        engine = self.engine
        served = engine.counters.bytes_served if engine else 0
        hook = engine.hook_name if engine else None
        path = self.source.path if self.source else "-"
        return (f"serving {path}: {len(self.connections)} clients, {served} bytes served, "
                f"hook {hook_label(hook)}")

    def _authorize(self, transport: asyncio.BaseTransport) -> Peer | str:
        """Who may read: on a Unix socket, by SO_PEERCRED; over TCP, whoever reached the
        port (loopback), or holds a client certificate (TLS). TCP peers are never admins."""
        sock = transport.get_extra_info("socket")
        creds = peer_credentials(sock) if sock is not None else None
        if creds is None:
            peer = address(transport.get_extra_info("peername"))
            cert = transport.get_extra_info("peercert")
            if cert:
                log.info("TLS client %s from %s", subject(cert), peer)
            return Peer(uid=None, admin=False, who=f"tcp {peer}")
        if not self._allowed(creds):
            self.refused += 1
            self._refusals.warning(f"uid {creds.uid}", f"refused connection from uid "
                                   f"{creds.uid} (gid {creds.gid}, pid {creds.pid})")
            return f"uid {creds.uid} is not allowed to read this dump"
        return Peer(uid=creds.uid, admin=creds.uid in self._admin_uids,
                    who=f"uid {creds.uid} pid {creds.pid}")

    def _allowed(self, creds: Credentials) -> bool:
        """The uid is allowed, or the primary or a supplementary group (the latter read
        only when the others do not decide)."""
        if creds.uid in self._allowed_uids or creds.gid in self._allowed_gids:
            return True
        return bool(self._allowed_gids) and not self._allowed_gids.isdisjoint(
            supplementary_groups(creds))

    def _refused_tls(self, peer: str, why: str) -> None:
        self.refused += 1
        self._refusals.warning(f"tls {why}", f"refused TLS connection from {peer}: {why}")

    def _live_stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), "refused_connections": self.refused,
                "tasks": len(asyncio.all_tasks()), **self.shared.stats()}

    async def reload_hook(self) -> None:
        """SIGHUP: have the registered hook reload its data; the outcome is logged."""
        if self.engine is not None:
            with contextlib.suppress(DumpdError):  # logged by reload_hook: nobody to tell
                await reload_hook(self.engine, "SIGHUP")

    def _finished(self, reason: str) -> None:
        """A finish condition ended the job: stop, and say why when stopped."""
        self.finished = reason
        self.stop()

    def stop(self) -> None:
        """Ask `serve_until_stopped` to return (safe from a signal handler). From now on
        no finish condition ends the job: a stop is not a finish (`finished` stays None)."""
        self.finish.halt()
        self._stop.set()

    async def serve_until_stopped(self) -> None:
        beat = asyncio.ensure_future(self._heartbeat()) if self.notifier.enabled else None
        try:
            await self._stop.wait()
        finally:
            if beat is not None:
                beat.cancel()

    async def _heartbeat(self) -> None:
        """STATUS= now and then, and WATCHDOG=1 at half the watchdog interval: sent from
        the event loop itself, so a stuck loop stops the pings and systemd acts."""
        watchdog = self.notifier.watchdog
        period = min(STATUS_PERIOD, watchdog / 2) if watchdog else STATUS_PERIOD
        while True:
            states = [f"STATUS={self.status()}"]
            if watchdog:
                states.append("WATCHDOG=1")
            self.notifier.send(*states)
            await asyncio.sleep(period)

    async def shutdown(self, deadline: float | None = None) -> None:
        """Stop accepting, let running requests and streams finish within `deadline`
        seconds (default: `server.shutdown_timeout`), then close the rest."""
        if deadline is None:
            deadline = self.config.server.shutdown_timeout
        why = f"finished: {self.finished};" if self.finished else "stopping:"
        self.notifier.send("STOPPING=1", f"STATUS={why} finishing running requests")
        for listener in self._listeners:
            listener.close()
        if self._tls is not None:
            await self._tls.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        clock = self._clock or asyncio.get_running_loop()
        end = clock.time() + deadline
        while self.connections and clock.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        for listener in self._listeners:
            await listener.wait_closed()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = None
        if self.engine is not None:
            self.engine.close()
        if self.source is not None:
            self.source.close()
        if self.finished is not None:
            log.info("finished: %s", self.finished)
