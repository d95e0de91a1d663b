"""
The real daemon (C{twistd -n emaild}) starting cold, with an embedded
PostgreSQL that does not exist yet: its ports accept connections at once,
but initdb, the server's start and the migrations take seconds.  Requests
hammered at it from the first moment get 503 (421 on SMTP) until it is
ready, then their normal answers, and never a 500 or a traceback.

And the embedded PostgreSQL belongs to the daemon: after a C{kill -9} it is
still running; the restarted daemon adopts it and stops it when it stops.
"""

from __future__ import annotations

import http.client
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.internet import defer, threads

from emaild.db.embedded import EmbeddedPostgres
from tests.daemon.test_daemon import DaemonTestCase, free_port
from tests.support import http_get, wait_for

TOKEN = secrets.token_hex(20)

#: what each route answers once the daemon is ready (no link, no launch
#: signature: the answers of a daemon that works but refuses the request)
NORMAL = {
    "/healthz": {200},
    "/metrics": {200},
    "/api/v1/queue": {200},
    "/lti/launch": {400, 401},
    "/email/<token>": {404},
    "smtp": {220},
}
STARTING = {"smtp": {421}}


class Hammer:
    """
    Threads that each ask one thing again and again, and remember every
    answer in order, until told to stop.
    """

    def __init__(self, http_port: int, smtp_port: int):
        self.http_port, self.smtp_port = http_port, smtp_port
        self.answers: dict[str, list[tuple[float, int, str]]] = {name: [] for name in NORMAL}
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(name,), daemon=True)
                        for name in NORMAL]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(30)

    def _loop(self, name: str):
        while not self.done.is_set():
            try:
                answer = self._smtp() if name == "smtp" else self._http(name)
            except (ConnectionError, socket.timeout, OSError, http.client.HTTPException):
                time.sleep(0.005)  # not listening yet (or reset): try again
                continue
            self.answers[name].append((time.monotonic(), *answer))

    def _http(self, name: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"} if name == "/api/v1/queue" else {}
            if name == "/lti/launch":
                conn.request("POST", name, body="oauth_consumer_key=nobody",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            elif name == "/email/<token>":
                conn.request("GET", "/email/Xq3ZpR7wKd")
            else:
                conn.request("GET", name, headers=headers)
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
            if response.status == 503 and not response.getheader("Retry-After"):
                body = "503 WITHOUT Retry-After\n" + body
            return response.status, body
        finally:
            conn.close()

    def _smtp(self) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=10) as s:
            greeting = s.makefile("rb").readline().decode("ascii", "replace")
            if greeting.startswith("220"):
                s.sendall(b"QUIT\r\n")
        return int(greeting[:3] or 0), greeting


class ColdStartTests(DaemonTestCase):
    timeout = 240

    def embedded_config(self, http_port: int, smtp_port: int):
        # not under pytest's temporary folder: as root the embedded server runs
        # as another user, and each pytest run makes /tmp/pytest-of-<user> 0700
        self.state = Path(tempfile.mkdtemp(prefix="emaild-cold-start-"))
        self.addCleanup(shutil.rmtree, self.state, ignore_errors=True)
        self.addCleanup(lambda: self.postgres().is_running() and self.postgres().stop("immediate"))
        return self.write_config(
            http_port, paths={"state_dir": str(self.state)}, database={"url": ""},
            api={"tokens": [TOKEN]},
            # the hammer connects as fast as it is answered: past the per-client
            # limit of new connections per minute it would rightly get 421 4.7.0
            smtp={"endpoint": f"tcp:{smtp_port}:interface=127.0.0.1",
                  "max_connections_per_minute": 1000000})

    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.state / "postgres")

    @defer.inlineCallbacks
    def test_503_and_421_until_ready_then_normal_answers_never_a_500(self):
        http_port, smtp_port = free_port(), free_port()
        config = self.embedded_config(http_port, smtp_port)
        hammer = Hammer(http_port, smtp_port)
        hammer.start()
        self.addCleanup(hammer.stop)
        daemon = self.start_daemon(["emaild", "--config", str(config)])

        def settled():
            if daemon.process.poll() is not None:
                raise AssertionError(f"daemon exited:\n{daemon.text()}")
            # every route has given its normal answer a few times
            return all(sum(1 for _, code, _ in hammer.answers[name] if code in NORMAL[name]) >= 3
                       for name in NORMAL)

        yield wait_for(settled, timeout=180, interval=0.1)
        yield threads.deferToThread(hammer.stop)
        self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())
        self.assertNotIn("Traceback", daemon.text())
        for name, answers in hammer.answers.items():
            codes = [code for _, code, _ in answers]
            starting = STARTING.get(name, {503})
            for _, code, body in answers:
                self.assertIn(code, NORMAL[name] | starting, f"{name}: {code}\n{body[:2000]}")
                self.assertNotIn("Traceback", body, name)
                self.assertNotIn("WITHOUT Retry-After", body, name)
            # until ready only "not yet", from then on only normal answers
            first_normal = next(i for i, code in enumerate(codes) if code in NORMAL[name])
            self.assertTrue(all(code in starting for code in codes[:first_normal]), name)
            self.assertTrue(all(code in NORMAL[name] for code in codes[first_normal:]),
                            f"{name}: {codes}")
            # initdb alone takes seconds: the window was seen on every route
            self.assertGreater(first_normal, 0, f"{name} never saw the daemon starting")
        self.assertFalse(self.postgres().is_running())

    @defer.inlineCallbacks
    def test_kill_9_restart_and_stop_leave_no_postgres_running(self):
        http_port = free_port()
        config = self.embedded_config(http_port, free_port())
        daemon = self.start_daemon(["emaild", "--config", str(config)])
        yield defer.ensureDeferred(self.healthy(http_port, daemon))
        yield defer.ensureDeferred(daemon.stop(signal.SIGKILL))
        postgres = self.postgres()
        self.assertTrue(postgres.is_running(), "PostgreSQL outlives a kill -9 of its daemon")
        self.assertEqual(postgres.users(), [])  # the dead daemon uses nothing

        restarted = self.start_daemon(["emaild", "--config", str(config)])
        yield defer.ensureDeferred(self.healthy(http_port, restarted))
        self.assertEqual(postgres.users(), [restarted.process.pid])
        self.assertTrue((yield defer.ensureDeferred(restarted.stopped_cleanly())),
                        restarted.text())
        self.assertFalse(postgres.is_running(), restarted.text())
        self.assertFalse((self.state / "postgres" / "postmaster.pid").exists())
        self.assertEqual(postgres.users(), [])

    @defer.inlineCallbacks
    def test_a_cli_command_does_not_stop_the_daemons_postgres(self):
        http_port = free_port()
        config = self.embedded_config(http_port, free_port())
        daemon = self.start_daemon(["emaild", "--config", str(config)])
        yield defer.ensureDeferred(self.healthy(http_port, daemon))
        cli = yield threads.deferToThread(
            subprocess.run, [sys.executable, "-m", "emaild", "--config", str(config), "queue"],
            capture_output=True, text=True, timeout=60, cwd=str(self.tmp))
        self.assertEqual(cli.returncode, 0, cli.stderr)
        self.assertTrue(self.postgres().is_running())
        status, _, _ = yield http_get(f"http://127.0.0.1:{http_port}/healthz")
        self.assertEqual(status, 200)
        self.assertTrue((yield defer.ensureDeferred(daemon.stopped_cleanly())), daemon.text())
        self.assertFalse(self.postgres().is_running())
