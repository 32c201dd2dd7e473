"""Throwaway certificates and SuperNode keys for a TLS deployment on loopback.

``openssl`` makes a CA and a server certificate whose subject alternative names are
``IP:127.0.0.1`` and ``DNS:localhost``; ``ssh-keygen`` makes one ECDSA P-384 key pair
per SuperNode (the key type Flower's SuperNode authentication takes). Nothing is
downloaded; every file stays in the deployment's private folder.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fedticket.errors import FedticketError


def _run(*args: str, cwd: Path) -> None:
    tool = args[0]
    if shutil.which(tool) is None:
        raise FedticketError(f"--tls needs {tool} on PATH; install it (Debian: apt-get install "
                             f"{'openssl' if tool == 'openssl' else 'openssh-client'})")
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise FedticketError(f"{tool} failed: {res.stderr.strip()[-200:]}")


def make_certificates(folder: Path, nodes: int, days: int = 2) -> dict[str, Path]:
    """CA, server certificate and key, and ``nodes`` SuperNode key pairs under ``folder``.

    Returns paths by name: ``ca``, ``server``, ``server-key``, ``node{i}`` (private key)
    and ``node{i}.pub``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
         "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=fedticket throwaway CA",
         cwd=folder)
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
         "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
    )
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", str(days), "-extfile", "san.ext",
         cwd=folder)
    out = {"ca": folder / "ca.crt", "server": folder / "server.crt",
           "server-key": folder / "server.key"}
    for i in range(nodes):
        out.update(node_key(folder, f"node{i}"))
    return out


def node_key(folder: Path, name: str) -> dict[str, Path]:
    """A SuperNode key pair ``name`` / ``name.pub`` (OpenSSH ECDSA P-384)."""
    _run("ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name,
         "-f", name, cwd=folder)
    return {name: folder / name, f"{name}.pub": folder / f"{name}.pub"}
