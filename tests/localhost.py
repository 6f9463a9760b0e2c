"""A free TCP port on localhost for servers the tests start (the app, serve-lm, fake PACS)."""

import socket

__all__ = ["free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
