"""Page compression: the codecs of makedumpfile's kdump-compressed format, for streams too.

Design rules:
- One codec per name, with makedumpfile's flag (`DUMP_DH_COMPRESSED_*` of
  diskdump_mod.h) and its settings (zlib at level 1 as `compress2(Z_BEST_SPEED)`, LZO1X-1,
  raw snappy, zstd at level 1), so what dumpd writes is what makedumpfile writes and
  what it reads back is what makedumpfile wrote.
- A page is compressed on its own; the caller decides what to do with a result that did
  not shrink (the format stores that page as it is).
- zlib is the standard library's; zstd is `compression.zstd` (Python 3.14) or its
  backport, `backports.zstd`. LZO and snappy are reached through the C libraries that
  makedumpfile and crash themselves link (liblzo2, libsnappy), by ctypes: no wheel
  exists for them that is worth its size, and a system without them cannot have made
  such a dump. A codec whose library is missing is `DumpdError` ENOSYS saying what to
  install; nothing is imported before a codec is first asked for.
- Corrupt input is `DumpdError` EIO; the output of a decompression is exactly `size`
  bytes or it is an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from dumpd.errors import DumpdError

ZLIB, LZO, SNAPPY, ZSTD = 0x1, 0x2, 0x4, 0x20
"""makedumpfile's DUMP_DH_COMPRESSED_ZLIB, _LZO, _SNAPPY and _ZSTD."""

NAMES = ("zlib", "lzo", "snappy", "zstd")
ZSTD_LEVEL = 1  # makedumpfile's ZSTD_compressCCtx(..., 1)


@dataclass(frozen=True, slots=True)
class Codec:
    """One compression method: `compress(data)`, `decompress(blob, size)` (exactly
    `size` bytes back, else EIO)."""

    name: str
    flag: int
    compress: Callable[[bytes | memoryview], bytes]
    decompress: Callable[[bytes | memoryview, int], bytes]


def _corrupt(name: str, why: str) -> DumpdError:
    return DumpdError("EIO", f"{name}: a compressed page does not decompress: {why}")


def _exact(name: str, out: bytes, size: int) -> bytes:
    if len(out) != size:
        raise _corrupt(name, f"{len(out)} bytes, not {size}")
    return out


def _zlib() -> Codec:
    def decompress(blob: bytes | memoryview, size: int) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(blob, size + 1)
        except zlib.error as exc:
            raise _corrupt("zlib", str(exc)) from exc
        if not inflater.eof:
            raise _corrupt("zlib", "the stream does not end where the page does")
        return _exact("zlib", out, size)

    return Codec("zlib", ZLIB, lambda data: zlib.compress(data, 1), decompress)


def _zstd() -> Codec:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14
    except ImportError:
        try:
            from backports import zstd
        except ImportError:
            raise DumpdError("ENOSYS", "zstd: this Python has no compression.zstd; "
                             "install backports.zstd (pip install backports.zstd)") from None
    local = threading.local()  # a compressor (its context reused) per thread

    def compress(data: bytes | memoryview) -> bytes:
        deflater = getattr(local, "compressor", None)
        if deflater is None:
            deflater = local.compressor = zstd.ZstdCompressor(ZSTD_LEVEL)
        out: bytes = deflater.compress(data, zstd.ZstdCompressor.FLUSH_FRAME)
        return out

    def decompress(blob: bytes | memoryview, size: int) -> bytes:
        inflater = zstd.ZstdDecompressor()
        try:
            out: bytes = inflater.decompress(blob, size + 1)
        except zstd.ZstdError as exc:
            raise _corrupt("zstd", str(exc)) from exc
        if not inflater.eof:
            raise _corrupt("zstd", "the frame does not end where the page does")
        return _exact("zstd", out, size)

    return Codec("zstd", ZSTD, compress, decompress)


def _library(name: str, soname: str, package: str) -> ctypes.CDLL:
    found = ctypes.util.find_library(name) or soname
    try:
        return ctypes.CDLL(found)
    except OSError:
        raise DumpdError("ENOSYS", f"{name}: the C library {soname} is not installed "
                         f"(apt-get install {package})") from None


_SIZE_T_P = ctypes.POINTER(ctypes.c_size_t)


def _lzo() -> Codec:
    """LZO1X-1 through liblzo2. `lzo_init` is the macro `__lzo_init_v2(version, sizeof
    short, int, long, lzo_uint32_t, lzo_uint, lzo_dict_t, char *, lzo_voidp,
    lzo_callback_t)`: the library checks that its caller agrees with it on those sizes."""
    lib = _library("lzo2", "liblzo2.so.2", "liblzo2-2")
    pointer = ctypes.sizeof(ctypes.c_void_p)
    sizes = (2, 4, ctypes.sizeof(ctypes.c_long), 4, ctypes.sizeof(ctypes.c_size_t),
             pointer, pointer, pointer, 6 * pointer)
    if lib.__lzo_init_v2(lib.lzo_version(), *sizes) != 0:
        raise DumpdError("ENOSYS", "lzo: liblzo2 refused to initialise (lzo_init)")
    work = threading.local()  # LZO1X_1_MEM_COMPRESS bytes of scratch per thread
    lib.lzo1x_1_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                     _SIZE_T_P, ctypes.c_void_p]
    lib.lzo1x_decompress_safe.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.c_char_p, _SIZE_T_P, ctypes.c_void_p]

    def compress(data: bytes | memoryview) -> bytes:
        data = bytes(data)
        scratch = getattr(work, "memory", None)
        if scratch is None:
            scratch = work.memory = ctypes.create_string_buffer(16384 * pointer)
        out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 64 + 3)
        length = ctypes.c_size_t(len(out))
        if lib.lzo1x_1_compress(data, len(data), out, ctypes.byref(length), scratch) != 0:
            raise DumpdError("EIO", "lzo: lzo1x_1_compress failed")
        return out.raw[:length.value]

    def decompress(blob: bytes | memoryview, size: int) -> bytes:
        out = ctypes.create_string_buffer(size)
        length = ctypes.c_size_t(size)
        status = lib.lzo1x_decompress_safe(bytes(blob), len(blob), out, ctypes.byref(length),
                                           None)
        if status != 0:
            raise _corrupt("lzo", f"lzo1x_decompress_safe says {status}")
        return _exact("lzo", out.raw[:length.value], size)

    return Codec("lzo", LZO, compress, decompress)


def _snappy() -> Codec:
    """Raw snappy (not the framing format) through libsnappy's C interface."""
    lib = _library("snappy", "libsnappy.so.1", "libsnappy1v5")
    lib.snappy_max_compressed_length.restype = ctypes.c_size_t
    lib.snappy_max_compressed_length.argtypes = [ctypes.c_size_t]
    lib.snappy_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                    _SIZE_T_P]
    lib.snappy_uncompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                      _SIZE_T_P]

    def compress(data: bytes | memoryview) -> bytes:
        data = bytes(data)
        out = ctypes.create_string_buffer(lib.snappy_max_compressed_length(len(data)))
        length = ctypes.c_size_t(len(out))
        if lib.snappy_compress(data, len(data), out, ctypes.byref(length)) != 0:
            raise DumpdError("EIO", "snappy: snappy_compress failed")
        return out.raw[:length.value]

    def decompress(blob: bytes | memoryview, size: int) -> bytes:
        out = ctypes.create_string_buffer(size)
        length = ctypes.c_size_t(size)
        status = lib.snappy_uncompress(bytes(blob), len(blob), out, ctypes.byref(length))
        if status != 0:
            raise _corrupt("snappy", f"snappy_uncompress says {status}")
        return _exact("snappy", out.raw[:length.value], size)

    return Codec("snappy", SNAPPY, compress, decompress)


_MAKERS: dict[str, Callable[[], Codec]] = {
    "zlib": _zlib, "lzo": _lzo, "snappy": _snappy, "zstd": _zstd}
_FLAGS = {ZLIB: "zlib", LZO: "lzo", SNAPPY: "snappy", ZSTD: "zstd"}


@functools.cache
def _load(name: str) -> Codec | DumpdError:
    try:
        return _MAKERS[name]()
    except DumpdError as exc:
        return exc


def codec(name: str) -> Codec:
    """The codec `name`: EINVAL for a name that is none, ENOSYS when its library is
    missing (the line says which to install)."""
    if name not in _MAKERS:
        raise DumpdError("EINVAL", f"unknown compression {name!r} (expected "
                         f"{', '.join(NAMES)})")
    found = _load(name)
    if isinstance(found, DumpdError):
        raise DumpdError(found.code, found.message)
    return found


def by_flag(flag: int) -> Codec:
    """The codec of one of makedumpfile's DUMP_DH_COMPRESSED_* flags (EIO for another
    value: a descriptor that says no known compression)."""
    if flag not in _FLAGS:
        raise DumpdError("EIO", f"page compressed with an unknown method (flags {flag:#x})")
    return codec(_FLAGS[flag])


def available() -> list[str]:
    """The names of the codecs this process can use, in `NAMES` order."""
    return [name for name in NAMES if not isinstance(_load(name), DumpdError)]
