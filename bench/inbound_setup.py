"""
Set-up for bench/inbound.py: the groups, the DNS server the members'
domain is served from, and the servers being measured (emaild with and
without sender authentication, the aiosmtpd reference).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from bench.common import BENCH, REPO, Bench, python, twistd, wait_for

DOMAIN = "bench.example.org"
COURSE = "BENCH101"
#: the members' addresses are @students.example.edu; smtp-source says HELO client.example.edu
ZONE = "example.edu"
MEMBER_DOMAIN = "students.example.edu"
#: the measured cases: emaild with and without sender authentication (the
#: outbound sender at the shipped default rate), emaild with it and the
#: sender lifted to 100000/s, the reference
AUTH_ON, AUTH_OFF, REFERENCE = "auth on", "auth off", "aiosmtpd"
AUTH_ON_LIFTED = "auth on, sender 1e5/s"
#: twistd -y file of the "authentication off" daemon (see there)
WITHOUT_AUTH = BENCH / "emaild_without_sender_auth.py"


# -- DNS ---------------------------------------------------------------------------
def start_dns(b: Bench, ttl: int) -> tuple[subprocess.Popen, int]:
    """
    bench/dns_zone.py in its own process: authoritative for example.edu, the
    members' domain publishing SPF (this host may send) and DMARC, and the
    HELO name its SPF; so every post passes SPF, aligned, hence DMARC.
    """
    records = [f"{MEMBER_DOMAIN}=v=spf1 ip4:127.0.0.1 -all",
               f"_dmarc.{MEMBER_DOMAIN}=v=DMARC1; p=reject; adkim=r; aspf=r",
               "client.example.edu=v=spf1 ip4:127.0.0.1 -all"]
    proc = b.spawn([python(), str(BENCH / "dns_zone.py"), ZONE, *records, "--ttl", str(ttl)],
                   stdout=subprocess.PIPE, stderr=open(b.dir / "dns.err", "ab"), cwd=REPO)
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        raise RuntimeError(f"DNS server did not start: {line!r}; see {b.dir}/dns.err")
    return proc, int(line.split()[-1])


def use_dns(config: Path, port: int) -> None:
    """Point the daemon's resolver ([dns] servers) at the bench's DNS server."""
    config.write_text(config.read_text() + f'\n[dns]\nservers = ["127.0.0.1:{port}"]\n')


def start_emaild(b: Bench, config: Path, case: str) -> subprocess.Popen:
    """A fresh daemon: `twistd emaild`, or the bench's one without sender authentication."""
    if case in (AUTH_ON, AUTH_ON_LIFTED):
        return b.start_daemon(config)
    log = b.dir / "daemon-auth-off.log"
    start = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "EMAILD_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    proc = b.spawn(twistd() + ["-n", "--pidfile=", "-y", str(WITHOUT_AUTH)], log=log,
                   cwd=b.dir, env=env)

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({proc.returncode}); see {log}")
        with open(log, "rb") as f:
            f.seek(start)
            return b"emaild ready" in f.read()

    wait_for(ready, 60, 0.05, "the daemon without sender authentication")
    return proc


def import_group(b: Bench, config: Path, group: str, n: int) -> list[dict]:
    """`emaild group import` n members into `group`; their members --json rows."""
    path = b.dir / f"{group}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "group", "course", "name"])
        for i in range(n):
            w.writerow([f"{group}{i}@students.example.edu", group, COURSE,
                        f"Member {i} of {group}"])
    cli = [python(), "-m", "emaild", "--config", str(config)]
    subprocess.run(cli + ["group", "import", str(path)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    out = subprocess.run(cli + ["group", "members", f"{COURSE}/{group}", "--json"], check=True,
                         cwd=REPO, stdout=subprocess.PIPE).stdout
    members = json.loads(out)
    assert len(members) == n, (group, len(members))
    return members


def start_reference(b: Bench, port: int, pool: int) -> subprocess.Popen:
    proc = b.spawn([python(), str(BENCH / "aiosmtpd_reference.py"), "--port", str(port),
                    "--dsn", b.dsn, "--pool", str(pool), "--domain", DOMAIN],
                   stdout=subprocess.PIPE, stderr=open(b.dir / "reference.err", "ab"), cwd=REPO)
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        raise RuntimeError(f"reference did not start: {line!r}; see {b.dir}/reference.err")
    return proc


def lift_limits(config: Path) -> None:
    """
    One client and one member send everything here: lift the per-client
    and per-member limits meant for the open Internet.
    """
    config.write_text(config.read_text().replace(
        "[mail]", "max_sessions_per_client = 1000\nmax_connections_per_minute = 1000000\n"
                  "[mail]") + "\n[groups]\nmax_posts_per_hour = 0\n")


def cprofile_summary(path: Path, top: int = 25) -> str:
    """The functions with the most own time, and the most cumulative time."""
    import io
    import pstats
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
