"""
The real daemon as an operator runs it: C{twistd -n emaild} (plugin) and
C{twistd -ny emaild.tac} in a subprocess, SIGTERM, C{kill -9} and restart,
privileged ports with C{--uid/--gid}, and a bad configuration.
"""

from __future__ import annotations

import collections
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from tests.relay import Relay
from tests.support import DatabaseTestCase, http_get, wait_for

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_config(path: Path, **sections) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}".replace("'", '"') if isinstance(value, str)
                         else f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """
    One twistd process; its log is kept in C{log_path}.
    """

    def __init__(self, args, cwd: Path, env=None):
        self.log_path = cwd / f"twistd-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "--pidfile=", "-n", *args], cwd=cwd, stdout=self.log,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        """
        Signal the daemon and wait for it to exit, keeping our reactor (and
        the relays it serves to the daemon) running meanwhile.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            await wait_for(lambda: self.process.poll() is not None, timeout=timeout, interval=0.05)
            return self.process.returncode
        finally:
            self.log.close()

    async def stopped_cleanly(self) -> bool:
        """
        SIGTERM it; twistd re-raises the signal once it has shut down, so a
        clean stop exits by SIGTERM (or 0) with our farewell in the log.
        """
        code = await self.stop(signal.SIGTERM)
        return code in (0, -signal.SIGTERM) and "emaild stopped" in self.text()


class DaemonTestCase(DatabaseTestCase):
    timeout = 120

    def start_daemon(self, args, env=None) -> Daemon:
        daemon = Daemon(args, self.tmp, env)
        self.addCleanup(lambda: daemon.process.poll() is None and daemon.process.kill())
        return daemon

    def write_config(self, http_port, **sections):
        base = {"paths": {"state_dir": str(self.tmp / "state")},
                "database": {"url": self.dsn},
                "http": {"endpoint": f"tcp:{http_port}:interface=127.0.0.1"},
                # any free port: several daemons run at once
                "smtp": {"endpoint": "tcp:0:interface=127.0.0.1"}}
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        return toml_config(self.tmp / "emaild.toml", **base)

    async def healthy(self, port, daemon):
        async def ok():
            if daemon.process.poll() is not None:
                raise AssertionError(f"daemon exited:\n{daemon.text()}")
            try:
                status, _, _ = await http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except OSError:
                return False
            return status == 200

        await wait_for(ok, timeout=60, interval=0.2)

    async def enqueue(self, n, template="plain"):
        outbox = self.homeserver().get_outbox()
        return await outbox.enqueue(
            template, [(f"r{i}@example.org", {"subject": f"s{i}", "body": "b"}) for i in range(n)])

    def states(self):
        return dict(self.query("SELECT state, count(*) FROM outbox GROUP BY state"))


class PluginTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_plugin_sends_to_the_maildir_and_stops_cleanly_on_sigterm(self):
        port = free_port()
        config = self.write_config(port)
        daemon = self.start_daemon(["emaild", "--config", str(config)])
        yield defer.ensureDeferred(self.healthy(port, daemon))
        yield defer.ensureDeferred(self.enqueue(5))
        new = self.tmp / "state" / "outbox" / "new"
        yield wait_for(lambda: new.is_dir() and len(list(new.iterdir())) == 5)
        yield wait_for(lambda: self.states() == {"sent": 5})
        self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())
        log = daemon.text()
        self.assertIn("emaild ready: transport maildir", log)
        self.assertNotIn("Traceback", log)
        message = next(new.iterdir()).read_bytes()
        self.assertTrue(message.startswith(b"Return-Path: <bounces+"))

    @defer.inlineCallbacks
    def test_tac_file_reads_the_config_from_the_environment(self):
        port = free_port()
        config = self.write_config(port)
        daemon = self.start_daemon(["-y", str(REPO / "emaild.tac")],
                                   env={"EMAILD_CONFIG": str(config)})
        yield defer.ensureDeferred(self.healthy(port, daemon))
        self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())

    def test_bad_configuration_stops_start_up_naming_the_key(self):
        config = toml_config(self.tmp / "bad.toml", relay={"rate": "fast"})
        daemon = Daemon(["emaild", "--config", str(config)], self.tmp)
        code = daemon.process.wait(60)
        daemon.log.close()
        self.assertNotEqual(code, 0)
        self.assertIn("emaild: configuration error: relay.rate: expected a number, got 'fast'",
                      daemon.text())

    @defer.inlineCallbacks
    def test_kill_9_mid_run_then_restart_reaches_a_terminal_state_for_every_message(self):
        relay = Relay()
        relay_port = relay.start()
        self.addCleanup(relay.stop)
        port = free_port()
        config = self.write_config(port, relay={
            "transport": "smtp", "host": "127.0.0.1", "port": relay_port, "tls": "none",
            "rate": 25, "burst": 2, "lease": "3s", "poll_interval": "1s"})
        count = 80
        yield defer.ensureDeferred(self.enqueue(count))
        daemon = self.start_daemon(["emaild", "--config", str(config)])
        yield wait_for(lambda: len(relay.accepted) >= 20, timeout=60)
        yield defer.ensureDeferred(daemon.stop(signal.SIGKILL))
        in_flight = self.states().get("sending", 0)
        restarted = self.start_daemon(["emaild", "--config", str(config)])
        yield wait_for(lambda: self.states().get("sent") == count, timeout=60)
        self.assertTrue((yield defer.ensureDeferred(restarted.stopped_cleanly())), restarted.text())
        copies = collections.Counter(m.mail_from for m in relay.accepted)
        self.assertEqual(len(copies), count)
        duplicates = sum(n - 1 for n in copies.values())
        # only a message that was in flight at the kill may arrive twice
        self.assertLessEqual(duplicates, in_flight)


    @defer.inlineCallbacks
    def test_two_daemons_on_one_database_share_the_rate_and_never_send_twice(self):
        arrivals: list[float] = []

        def arrived(message):
            # the end of a message's data comes after its claim took a token
            arrivals.append(time.time())
            return (250, "2.0.0 Ok")

        relay = Relay(data_policy=arrived)
        relay_port = relay.start()
        self.addCleanup(relay.stop)
        rate, burst, count = 20, 2, 100
        daemons = []
        for i in range(2):
            port = free_port()
            config = self.write_config(port, relay={
                "transport": "smtp", "host": "127.0.0.1", "port": relay_port, "tls": "none",
                "rate": rate, "burst": burst, "poll_interval": "1s"})
            config = config.rename(self.tmp / f"emaild{i}.toml")
            daemons.append(self.start_daemon(["emaild", "--config", str(config)]))
            yield defer.ensureDeferred(self.healthy(port, daemons[-1]))
        # the shared bucket holds at most `burst` tokens now (nothing was sent
        # yet) and gains `rate` a second on the senders' clocks, this machine's
        before_enqueue = time.time()
        yield defer.ensureDeferred(self.enqueue(count))
        yield wait_for(lambda: self.states().get("sent") == count, timeout=240, interval=0.1)
        for daemon in daemons:
            self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())
        copies = collections.Counter(m.mail_from for m in relay.accepted)
        self.assertEqual((len(copies), max(copies.values())), (count, 1))
        senders = self.query("SELECT sender, count(*) FROM outbox_attempts GROUP BY sender")
        self.assertEqual(len(senders), 2, "both daemons sent")
        # The last claim needed count - burst tokens refilled after the
        # enqueue, so the last message cannot have arrived sooner, whatever
        # the load (load only delays it).  Two buckets, one per daemon, would
        # have let it arrive in half the time.  (Spreads between recorded
        # attempts are not bounded this way: the first batch's record can be
        # late by a connection's set-up, which once made such a check fail.)
        self.assertGreaterEqual(max(arrivals) - before_enqueue, (count - burst) / rate - 0.01)

    test_two_daemons_on_one_database_share_the_rate_and_never_send_twice.timeout = 480  # type: ignore[attr-defined]


class PrivilegeTests(DaemonTestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("binding a privileged port needs root")
        try:
            probe = subprocess.run(
                [sys.executable, "-c", "import importlib.readers, email.mime.text; "
                 f"open({str(REPO / 'templates' / 'email' / 'plain.txt')!r}).read()"],
                user="nobody", capture_output=True, cwd="/").returncode
        except PermissionError:
            probe = -1
        if probe != 0:
            raise unittest.SkipTest(
                "user nobody cannot read this Python or checkout (e.g. it lives under "
                "/root), so a daemon that drops to nobody could not run from here")
        return super().setUp()

    @defer.inlineCallbacks
    def test_binds_a_privileged_port_as_root_then_runs_as_nobody(self):
        nobody = pwd.getpwnam("nobody")
        state = self.tmp / "state"
        state.mkdir()
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.tmp, 0o755)
        port = next(p for p in range(1023, 900, -1) if _bindable(p))
        config = self.write_config(port)
        daemon = self.start_daemon(["--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid),
                                    "emaild", "--config", str(config)])
        yield defer.ensureDeferred(self.healthy(port, daemon))
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(nobody.pw_uid)})
        self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
