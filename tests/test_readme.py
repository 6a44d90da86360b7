"""The README's snippets and commands run as written (on free ports), and a person trying them in
a clone is left with a clean clone and a quiet terminal."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def snippets() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    named = {}
    for block in blocks:
        first = block.splitlines()[0]
        match = re.match(r"# (\w+\.py)", first)
        if match:
            named[match.group(1)] = block
    return named


def section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scripts(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """server.py and client.py, on a free port, in a directory of their own (standing for the
    clone); their environment points the temporary directory to another one."""
    code = snippets()
    assert {"server.py", "client.py"} <= set(code)
    port = free_udp_port()
    work = tmp_path / "work"
    work.mkdir()
    for name, source in code.items():
        assert "127.0.0.1:4433" in source
        (work / name).write_text(source.replace("127.0.0.1:4433", f"127.0.0.1:{port}"))
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp)}
    return work, env


def test_readme_server_and_client(tmp_path: Path) -> None:
    """server.py serves, client.py prints the echo, both exactly as the README shows them; the
    certificate goes to the temporary directory, not into the directory they run in."""
    work, env = scripts(tmp_path)
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=work, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        client = subprocess.run(
            [sys.executable, "client.py"],
            cwd=work,
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
    assert sorted(p.name for p in work.iterdir()) == ["client.py", "server.py"]
    assert (Path(env["TMPDIR"]) / "kwik-cert.pem").read_bytes().startswith(b"-----BEGIN")


def test_readme_server_stops_quietly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) on the README's server: it exits at once, status 0, and prints no
    traceback (no CancelledError, no KeyboardInterrupt)."""
    work, env = scripts(tmp_path)
    server = subprocess.Popen(
        [sys.executable, "server.py"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr == ""
    assert server.returncode == 0


def test_readme_kwik_commands_leave_the_clone_clean(tmp_path: Path) -> None:
    """The README's ``listen``/``connect`` pair works as shown, and writes its certificate
    outside the directory it is run from (the README names a path under /tmp; the test moves
    that to its own directory)."""
    commands = re.search(r"```sh\n(.*?)```", section("The `kwik` command"), re.S)
    assert commands is not None
    lines = [line.split("  #")[0].strip() for line in commands.group(1).splitlines()]
    listen = next(line for line in lines if " listen " in line)
    connect = next(line for line in lines if " connect " in line)
    files = re.findall(r"--(?:cert-out|ca) (\S+)", listen + " " + connect)
    assert files and all(path.startswith("/tmp/") for path in files), files
    temp = tmp_path / "temp"
    temp.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    def local(line: str) -> str:
        return line.replace("/tmp/", f"{temp}/").replace("python3 ", f"{sys.executable} ")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert "127.0.0.1:4433" in listen and "127.0.0.1:4433" in connect
    server = subprocess.Popen(
        shlex.split(local(listen.replace("127.0.0.1:4433", "127.0.0.1:0"))),
        cwd=work,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stderr is not None
        addr = None
        for _ in range(10):  # a few lines about the certificate, then the address
            line = server.stderr.readline()
            if line.startswith("listening on "):
                addr = line.split()[-1]
                break
        assert addr is not None, "no 'listening on' line"
        client = subprocess.run(
            ["bash", "-c", local(connect.replace("127.0.0.1:4433", addr))],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout == "hello\n"
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
        assert server.returncode == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    assert list(work.iterdir()) == []
    assert (temp / "kwik-cert.pem").exists()


@pytest.mark.parametrize("name", ["cert.pem", "kwik-cert.pem", "key.pem"])
def test_certificates_written_in_the_clone_are_ignored(name: str) -> None:
    """A certificate someone saved in the clone anyway (older instructions, ``--cert-out
    cert.pem``) is not offered for commit."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", name],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.decode().strip()}")
    assert result.returncode == 0, f"{name} is not ignored by .gitignore"


#: Hides the extras' packages from a pytest run: None in sys.modules makes their import fail.
WITHOUT_EXTRAS = """
import sys
for name in ("matplotlib", "build", "mkdocs"):  # the 'bench', 'dev' and 'docs' extras
    sys.modules[name] = None
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_skips_name_the_extra_the_readme_names() -> None:
    """With the README's install line (the extras' packages missing), the tests that skip say
    which extra they need, and the README's test section names those extras."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, "-q", "-rs", "-n", "0", "-p", "no:cacheprovider",
         "tests/test_packaging.py", "tests/test_plots.py", "tests/test_docs.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", result.stdout, re.M)
    assert reasons, result.stdout[-3000:]
    needed = set()
    for reason in reasons:
        match = re.search(r"needs the '(\w+)' extra", reason)
        assert match and match.group(1) in extras, reason
        assert f"pip install -e '.[{match.group(1)}]'" in reason, reason
        needed.add(match.group(1))
    assert needed == {"bench", "dev", "docs"}
    quick_start = section("Quick start")
    for extra in needed:
        assert f"the `{extra}` extra" in quick_start, extra
