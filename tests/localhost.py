"""Local servers the tests start (the app, serve-lm, fake PACS): a free TCP port, and an ASGI app served in a thread."""

import socket
import threading
import time

__all__ = ["free_port", "serve_in_thread", "stop_process", "cli_options", "cli_actions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process, timeout: float = 15.0) -> None:
    """SIGTERM ``process`` (a ``subprocess.Popen``), and SIGKILL it when it has not exited within ``timeout`` seconds."""
    import signal
    import subprocess

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def serve_in_thread(app, timeout: float = 20.0):
    """(the started ``uvicorn.Server``, its port) for ``app`` served on 127.0.0.1 in a daemon thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    return server, port


def cli_options(parser, path: str):
    """(command path, option strings, help) for every option and positional under an ``argparse`` parser."""
    for command, _, action in cli_actions(parser, path):
        yield command, action.option_strings or [action.dest], action.help


def cli_actions(parser, path: str):
    """(command path, the parser that holds it, ``argparse.Action``) for every option and positional under
    ``parser``, nested commands included (``m3 train vision``, ``m3 pacs outbox drop``)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from cli_actions(sub, f"{path} {name}")
        else:
            yield path, parser, action
