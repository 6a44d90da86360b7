"""The README's server and client snippets run as written (on a free port)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snippets() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    named = {}
    for block in blocks:
        first = block.splitlines()[0]
        match = re.match(r"# (\w+\.py)", first)
        if match:
            named[match.group(1)] = block
    return named


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_server_and_client(tmp_path: Path) -> None:
    """server.py serves, client.py prints the echo, both exactly as the README shows them."""
    code = snippets()
    assert {"server.py", "client.py"} <= set(code)
    port = free_udp_port()
    for name, source in code.items():
        assert "127.0.0.1:4433" in source
        (tmp_path / name).write_text(source.replace("127.0.0.1:4433", f"127.0.0.1:{port}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        client = subprocess.run(
            [sys.executable, "client.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "hello kwik"
    finally:
        server.terminate()
        server.wait(timeout=10)
