"""Who may connect: patient images must not be open to a network by accident.

By default the server listens on 127.0.0.1 only. Any other ``--host`` needs an access token:
a random one is made at start (or taken from ``$DISTILLSEG_WEB_TOKEN``), printed once, and
checked by wslink on every connection (the ``wslink.hello`` of each websocket carries it as
its ``secret``; a client without it is refused and gets no state and no image). The browser
gives it as ``?secret=TOKEN`` in the address, which trame's client reads and then removes
from the address bar.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENVIRONMENT = "DISTILLSEG_WEB_TOKEN"
MIN_TOKEN_CHARS = 16


def is_local(host: str) -> bool:
    """True when ``host`` is a loopback address (only this machine can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, environ=os.environ) -> str | None:
    """The token every connection must give: ``None`` on a loopback host, else the one in
    ``$DISTILLSEG_WEB_TOKEN`` or a new random one (192 bits).

    Raises:
        ValueError: ``$DISTILLSEG_WEB_TOKEN`` is set but shorter than 16 characters.
    """
    if is_local(host):
        return None
    token = environ.get(TOKEN_ENVIRONMENT)
    if token is not None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"${TOKEN_ENVIRONMENT} is too short ({len(token)} characters, at least "
                             f"{MIN_TOKEN_CHARS}): leave it unset for a random token")
        return token
    return secrets.token_urlsafe(24)


def address(host: str, port: int, token: str | None) -> str:
    """The address to open in a browser (with the token when one is needed)."""
    if host in ("0.0.0.0", "::"):  # every interface: name this machine as others reach it
        host = socket.getfqdn()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?secret={token}" if token else "")
