"""TLS contexts from PEM files, for the server's TCP listener and for clients.

Both sides require TLS 1.2 or later and a certificate from the other: the server
accepts only clients whose certificate `tls_client_ca` signed; clients accept only a
server whose certificate their CA signed and which names the host they asked for.
File mistakes are `StartupError`s of one line naming the option, the file and what is
wrong (the `ssl` module's own messages, such as "PEM lib", say neither). Imported
only when TLS is used.
"""

from __future__ import annotations

import re
import ssl

from dumpd.errors import StartupError

CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")
ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """The listener's context: our certificate chain, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, ("server.tls_cert", cert), ("server.tls_key", key),
          ("server.tls_client_ca", client_ca))
    return context


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A client's context: our certificate to show, the CA that signed the server's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    _load(context, ("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca))
    return context


def describe(exc: ssl.SSLError) -> str:
    """One line for a failed handshake, without OpenSSL's source locations."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc)


Named = tuple[str, str]  # (option, path)


def _load(context: ssl.SSLContext, cert: Named, key: Named, ca: Named) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    _pem(ca, CERTIFICATE, "a PEM certificate")
    _pem(cert, CERTIFICATE, "a PEM certificate")
    key_text = _pem(key, PRIVATE_KEY, "a PEM private key")
    if ENCRYPTED.search(key_text):
        raise _error(key, "is encrypted; use an unencrypted key, readable by its owner only")
    try:
        context.load_verify_locations(cafile=ca[1])
    except ssl.SSLError as exc:
        raise _error(ca, f"cannot load: {_why(exc)}") from None
    try:
        context.load_cert_chain(cert[1], key[1])
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _error(key, f"does not match the certificate in {cert[1]}") from None
        raise _error(cert, f"cannot load with {key[1]}: {_why(exc)}") from None


def _pem(named: Named, marker: re.Pattern[bytes], what: str) -> bytes:
    """The file's bytes, once it is known to be readable and to hold `marker`."""
    try:
        with open(named[1], "rb") as f:
            text = f.read()
    except OSError as exc:
        raise _error(named, f"cannot read: {exc.strerror}") from None
    if not marker.search(text):
        raise _error(named, f"not {what}")
    return text


def _why(exc: ssl.SSLError) -> str:
    return "not valid PEM" if exc.reason is None else describe(exc)


def _error(named: Named, why: str) -> StartupError:
    option, path = named
    return StartupError(f"{option}: {path}: {why}")
