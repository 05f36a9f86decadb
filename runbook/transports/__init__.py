"""How runbook reaches a database's host: run commands, move small files, open a TCP path.

Steps only see the ``Transport`` interface from ``base``; ``local.LocalTransport`` runs on this
machine and ``ssh.SSHTransport`` (imported only by environments that use SSH, since it pulls in
Fabric and Paramiko) runs over one verified SSH connection.
"""

from __future__ import annotations

from runbook.transports.base import Result, Transport, Tunnel, quote

__all__ = ["Result", "Transport", "Tunnel", "quote"]
