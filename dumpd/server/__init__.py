"""Sockets, connections, dispatch, backpressure and shutdown around one engine."""

from dumpd.server.app import Server

__all__ = ["Server"]
