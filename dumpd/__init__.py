"""dumpd: serve a crashed kernel's memory over msgpack-RPC, page-coalesced, is-RAM aware."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/dumpd/dumpd.sock"
