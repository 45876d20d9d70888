"""Check a hostfile before `colossalai run --hostfile` starts anything: every host resolves, takes ssh
without a password, and has this working directory and this Python.

    python -m colossal_hammer.hostfile HOSTFILE    (train.example.sh runs it when HOSTFILE is set)

Why: `colossalai run` connects to each host only when it launches there, so a host that does not
answer fails after the others have started (they wait for it at the rendezvous), and a name that
does not resolve ends in a traceback. Here each problem is one line,
`error: HOSTFILE:LINE: HOST: <what is wrong and what to do>`, exit status 2, before training starts.

Hosts are reached as `colossalai run` reaches them: Fabric (paramiko) with ~/.ssh/config, and hosts
it counts as this machine (localhost, 127.0.0.1, this host's own name) run without ssh, so they are
not checked over ssh either.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Tuple

from .errors import InputError, command_name, require_file, run_cli

CONNECT_TIMEOUT = 10  # seconds; an unreachable address otherwise waits for the OS TCP timeout (minutes)


def read_hosts(path: str) -> List[Tuple[int, str]]:
    """(line number, host) per non-empty line. colossalai run takes every other line as a host name,
    comments included, so a comment or a line with spaces is refused here rather than dialled."""
    require_file(path, "HOSTFILE", "hostfile")
    hosts, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            host = line.strip()
            if not host:
                continue
            if host.startswith("#") or len(host.split()) > 1:
                raise InputError(f"{path}:{number}: {host[:40]}: one host name per line and nothing else "
                                 f"(colossalai run reads comments as host names); remove this line")
            if host in seen:
                raise InputError(f"{path}:{number}: {host}: already on line {seen[host]}; list each host once")
            seen[host] = number
            hosts.append((number, host))
    if not hosts:
        raise InputError(f"{path}: no host names; write one per line")
    return hosts


def is_local(host: str) -> bool:
    """colossalai run's own test (it runs these hosts without ssh); OSError if the name does not resolve."""
    from colossalai.cli.launcher.hostinfo import HostInfo

    return HostInfo.is_host_localhost(host)


def check_host(host: str, workdir: str, python: str) -> None:
    """Raise InputError naming what fails on `host` (already known not to be this machine)."""
    import fabric

    probe = f"cd {shlex.quote(workdir)} && test -x {shlex.quote(python)}"
    try:
        with fabric.Connection(host, connect_timeout=CONNECT_TIMEOUT) as conn:
            result = conn.run(probe, hide=True, warn=True, in_stream=False)
    except Exception as e:  # noqa: BLE001 - paramiko/socket raise many types; each becomes one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot ssh in ({type(e).__name__}: {reason}); every host needs passwordless "
                         f"ssh from this one (`ssh {host} true` must work without a prompt)") from None
    if result.exited != 0:
        raise InputError(f"has no {workdir} or no {python}; every host needs the same paths and venv")


def check(path: str) -> List[str]:
    hosts = read_hosts(path)
    workdir, python = os.getcwd(), sys.executable
    for number, host in hosts:
        try:
            if not is_local(host):
                check_host(host, workdir, python)
        except OSError as e:
            raise InputError(f"{path}:{number}: {host}: cannot resolve the name ({e.strerror or e}); "
                             f"give a host name or address this machine resolves") from None
        except InputError as e:
            raise InputError(f"{path}:{number}: {host}: {e}") from None
    return [host for _, host in hosts]


def main(argv=None) -> List[str]:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0])
    p.add_argument("hostfile", help="One host name per line, as colossalai run --hostfile takes it")
    path = p.parse_args(argv).hostfile
    hosts = run_cli(lambda: check(path))
    print(f"hostfile {path}: {len(hosts)} hosts ready: {', '.join(hosts)}")
    return hosts


if __name__ == "__main__":
    main()
