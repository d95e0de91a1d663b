"""
The C{emaild} command, run as a real subprocess against a real database.
"""

from __future__ import annotations

import json
import signal
import subprocess

from twisted.trial import unittest

from emaild.outbound.stats import queue_summary
from tests.cli.support import CLITestCase


class SendToTests(CLITestCase):
    def test_send_with_and_without_context(self):
        result = self.cli("send", "--template", "plain", "--to", "a@example.org",
                          "--context", '{"subject": "Hi", "body": "Hello"}')
        self.assertEqual(result.returncode, 0, result)
        result2 = self.cli("send", "--template", "welcome", "--to", "b@example.org")
        self.assertEqual(result2.returncode, 0, result2)
        rows = self.outbox()
        self.assertEqual([str(r[0]) for r in rows],
                         result.stdout.split() + result2.stdout.split())
        self.assertEqual([r[1:] for r in rows], [
            ("a@example.org", "plain", "default", None, "Hi", "queued"),
            ("b@example.org", "welcome", "default", None, "Welcome to the course, there", "queued"),
        ])

    def test_each_to_has_its_own_context(self):
        result = self.cli("send", "--template", "welcome", "--qos", "bulk", "--batch", "week 1",
                          "--to", "ada@example.org", "--context", '{"name": "Ada", "course": "Logic"}',
                          "--to", "bob@example.org", "--context", '{"name": "Bob"}',
                          "--to", "cy@example.org")
        self.assertEqual(result.returncode, 0, result)
        rows = self.outbox()
        self.assertEqual(result.stdout.split(), [str(r[0]) for r in rows])
        self.assertEqual([(r[1], r[3], r[4], r[5]) for r in rows], [
            ("ada@example.org", "bulk", "week 1", "Welcome to Logic, Ada"),
            ("bob@example.org", "bulk", "week 1", "Welcome to the course, Bob"),
            ("cy@example.org", "bulk", "week 1", "Welcome to the course, there"),
        ])

    def test_rejected_recipient_is_reported(self):
        result = self.cli("send", "--template", "plain", "--to", "not-an-address",
                          "--context", '{"subject": "s", "body": "b"}')
        self.assertOneLineError(result, 1, "not-an-address", "not a valid e-mail address")
        self.assertEqual(self.outbox(), [])

    def test_unknown_template(self):
        result = self.cli("send", "--template", "nosuch", "--to", "a@example.org")
        self.assertOneLineError(result, 1, "nosuch")
        self.assertEqual(self.outbox(), [])

    def test_unknown_qos(self):
        result = self.cli("send", "--template", "welcome", "--qos", "urgent", "--to", "a@example.org")
        self.assertOneLineError(result, 1, "urgent", "bulk, default")
        self.assertEqual(self.outbox(), [])

    def test_bad_context(self):
        for value, fragment in (('{"name": ', "not valid JSON"), ("[1, 2]", "JSON object")):
            result = self.cli("send", "--template", "welcome", "--to", "a@example.org",
                              "--context", value)
            self.assertOneLineError(result, 2, "emaild: error:", "--context", fragment)
        result = self.cli("send", "--template", "welcome", "--context", "{}", "--to", "a@example.org")
        self.assertOneLineError(result, 2, "--context", "must follow the --to")
        self.assertEqual(self.outbox(), [])

    def test_argument_errors(self):
        csv_path = self.tmp / "r.csv"
        csv_path.write_text("email\na@example.org\n")
        both = self.cli("send", "--template", "welcome", "--to", "a@example.org",
                        "--recipients", str(csv_path))
        self.assertOneLineError(both, 2, "--recipients", "not allowed with", "--to")
        neither = self.cli("send", "--template", "welcome")
        self.assertOneLineError(neither, 2, "one of the arguments --to --recipients is required")
        self.assertOneLineError(self.cli(), 2, "no command")
        self.assertOneLineError(self.cli("queue", "--limit", "0", "--failed"), 2, "--limit")
        missing = self.cli("send", "--template", "welcome", "--recipients", str(self.tmp / "none.csv"))
        self.assertOneLineError(missing, 2, "none.csv")
        self.assertEqual(self.outbox(), [])

    def test_database_unreachable(self):
        self.config_path.write_text(self.config_path.read_text().replace(
            json.dumps(self.dsn), json.dumps(f"dbname=x user=postgres host={self.tmp / 'no-socket'}")))
        result = self.cli("send", "--template", "welcome", "--to", "a@example.org")
        self.assertOneLineError(result, 1, "cannot open the database")


class SendCSVTests(CLITestCase):
    def test_good_and_bad_rows(self):
        path = self.tmp / "week 1.csv"
        path.write_bytes(
            "\ufeffEmail,name,course\n"
            "ada@example.org,Ada,Logic\n"
            "not-an-address,Bob,Logic\n"
            ",Nobody,Logic\n"
            "cy@example.org,,\n"
            "dan@example.org,Dan,Logic,surplus\n"
            "\u00e9va@example.org,\u00c9va,Logique\n"
            "fay@example.org,Fay,\"Multi\nline\"\n".encode("utf-8"))
        result = self.cli("send", "--template", "welcome", "--recipients", str(path))
        self.assertEqual(result.returncode, 1, result)
        rows = self.outbox()
        self.assertEqual([(r[1], r[4], r[5]) for r in rows], [
            ("ada@example.org", "week 1.csv", "Welcome to Logic, Ada"),
            ("cy@example.org", "week 1.csv", "Welcome to ,"),  # empty cells stay empty
            ("fay@example.org", "week 1.csv", "Welcome to Multi line, Fay"),
        ])
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"queued 3 messages (ids {rows[0][0]}\u2013{rows[-1][0]}), rejected 4 rows")
        self.assertTrue(lines[1].startswith("line 3: not-an-address: "), lines)
        self.assertIn("not a valid e-mail address", lines[1])
        self.assertEqual(lines[2], "line 4: (empty): recipient address is empty")
        self.assertEqual(lines[3], "line 6: dan@example.org: 1 more cells than the header's 3 columns")
        self.assertTrue(lines[4].startswith("line 7: \u00e9va@example.org: "), lines)
        self.assertIn("not queued", lines[-1])
        self.assertNotIn("Traceback", result.stderr)

    def test_all_good_rows_exit_zero_with_batch_label(self):
        path = self.tmp / "r.csv"
        path.write_text("email,subject,body\na@example.org,S1,B1\nb@example.org,S2,B2\n")
        result = self.cli("send", "--template", "plain", "--qos", "transactional",
                          "--batch", "label", "--recipients", str(path))
        self.assertEqual(result.returncode, 0, result)
        rows = self.outbox()
        self.assertEqual([(r[1], r[3], r[4], r[5]) for r in rows], [
            ("a@example.org", "transactional", "label", "S1"),
            ("b@example.org", "transactional", "label", "S2")])
        self.assertEqual(result.stdout.strip(),
                         f"queued 2 messages (ids {rows[0][0]}\u2013{rows[1][0]}), rejected 0 rows")

    def test_no_email_column(self):
        path = self.tmp / "r.csv"
        path.write_text("mail,name\na@example.org,Ada\n")
        result = self.cli("send", "--template", "welcome", "--recipients", str(path))
        self.assertOneLineError(result, 1, "no 'email' column", "'mail', 'name'")
        self.assertEqual(self.outbox(), [])

    def test_missing_template_value_rejects_rows(self):
        path = self.tmp / "r.csv"
        path.write_text("email,subject\na@example.org,Hi\n")
        result = self.cli("send", "--template", "plain", "--recipients", str(path))
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("line 2: a@example.org: ", result.stdout)
        self.assertIn("'body' is undefined", result.stdout)
        self.assertTrue(result.stdout.startswith("queued 0 messages, rejected 1 row\n"))

    def test_undecodable_bytes_stop_the_reading(self):
        path = self.tmp / "latin1.csv"
        good = "".join(f"user{i}@example.org,S,B\n" for i in range(1500))
        path.write_bytes(b"email,subject,body\n" + good.encode() + b"x@example.org,Caf\xe9,B\n")
        result = self.cli("send", "--template", "plain", "--recipients", str(path))
        self.assertOneLineError(result, 1, "latin1.csv: cannot read past line", "utf-8")
        queued = len(self.outbox())
        self.assertGreaterEqual(queued, 1000)
        self.assertTrue(result.stdout.startswith(f"queued {queued} messages"), result.stdout)

    def test_thousands_of_rows_go_in_chunks(self):
        path = self.tmp / "many.csv"
        with open(path, "w", encoding="utf-8") as f:
            f.write("email,subject,body\n")
            for i in range(5000):
                f.write(f"user{i}@example.org,Hello {i},Body {i}\n")
        result = self.cli("send", "--template", "plain", "--qos", "bulk", "--recipients", str(path))
        self.assertEqual(result.returncode, 0, result)
        rows = self.query("SELECT id, recipient, subject FROM outbox ORDER BY id")
        self.assertEqual(len(rows), 5000)
        ids = [r[0] for r in rows]
        self.assertEqual(ids, list(range(ids[0], ids[0] + 5000)))
        self.assertEqual([r[1] for r in rows], [f"user{i}@example.org" for i in range(5000)])
        self.assertEqual(rows[4999][2], "Hello 4999")
        self.assertEqual(result.stdout.strip(),
                         f"queued 5000 messages (ids {ids[0]}\u2013{ids[-1]}), rejected 0 rows")


class QueueTests(CLITestCase):
    def fill(self):
        self.insert("queued", "bulk", n=3)
        self.insert("sent", "bulk", n=2)
        self.insert("failed", "default", reason="550 5.1.1 no such user", attempts=1,
                    recipient="gone@example.org", template="welcome")
        self.insert("suppressed", "default")
        self.insert("sending", "transactional")

    def test_counts_table(self):
        self.fill()
        result = self.cli("queue")
        self.assertEqual(result.returncode, 0, result)
        *lines, last = result.stdout.strip().splitlines()
        self.assertEqual(last, "suppressed addresses: 0")
        table = [line.split() for line in lines]
        self.assertEqual(table, [
            ["class", "queued", "sending", "sent", "failed", "suppressed", "total"],
            ["bulk", "3", "0", "2", "0", "0", "5"],
            ["default", "0", "0", "0", "1", "1", "2"],
            ["transactional", "0", "1", "0", "0", "0", "1"],
            ["total", "3", "1", "2", "1", "1", "8"],
        ])

    def test_json(self):
        self.fill()
        result = self.cli("queue", "--json")
        self.assertEqual(result.returncode, 0, result)
        zero = dict.fromkeys(["queued", "sending", "sent", "failed", "suppressed"], 0)
        self.assertEqual(json.loads(result.stdout), {
            "queued": 3, "sending": 1, "sent": 2, "failed": 1, "suppressed": 1, "total": 8,
            "by_class": {
                "bulk": {**zero, "queued": 3, "sent": 2},
                "default": {**zero, "failed": 1, "suppressed": 1},
                "transactional": {**zero, "sending": 1},
            },
            "suppressed_addresses": 0,
        })

    def test_json_of_an_empty_queue(self):
        result = self.cli("queue", "--json")
        self.assertEqual(json.loads(result.stdout), {
            "queued": 0, "sending": 0, "sent": 0, "failed": 0, "suppressed": 0, "total": 0,
            "by_class": {}, "suppressed_addresses": 0})

    def test_suppressed_addresses(self):
        result = self.cli("queue", "--suppressed")
        self.assertEqual((result.returncode, result.stdout), (0, "no suppressed addresses\n"))
        self.query("INSERT INTO suppressions (address, reason, created_at) VALUES"
                   " ('gone@example.org', 'hard bounces: 3 (last: 5.1.1 no such user)',"
                   "  '2026-03-01 10:00:00+00'),"
                   " ('spam@example.org', 'complaint', '2026-03-02 10:00:00+00')")
        result = self.cli("queue")
        self.assertEqual(result.stdout.strip().splitlines()[-1],
                         "suppressed addresses: 2 (emaild queue --suppressed lists them)")
        self.assertEqual(json.loads(self.cli("queue", "--json").stdout)["suppressed_addresses"], 2)
        result = self.cli("queue", "--suppressed")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout.splitlines(), [
            "address           since (UTC)           reason",
            "spam@example.org  2026-03-02 10:00:00Z  complaint",
            "gone@example.org  2026-03-01 10:00:00Z  hard bounces: 3 (last: 5.1.1 no such user)"])
        self.assertEqual(json.loads(self.cli("queue", "--suppressed", "--json").stdout), [
            {"address": "spam@example.org", "reason": "complaint",
             "since": "2026-03-02T10:00:00+00:00"},
            {"address": "gone@example.org", "reason": "hard bounces: 3 (last: 5.1.1 no such user)",
             "since": "2026-03-01T10:00:00+00:00"}])
        self.assertOneLineError(self.cli("queue", "--suppressed", "--failed"), 2, "not allowed")

    def test_failed(self):
        self.fill()
        (failed_id,), = self.query("SELECT id FROM outbox WHERE state = 'failed'")
        result = self.cli("queue", "--failed")
        self.assertEqual(result.returncode, 0, result)
        header, row = result.stdout.strip().splitlines()
        self.assertIn("reason", header)
        self.assertEqual(row.split()[:5], [str(failed_id), "gone@example.org", "welcome", "default", "1"])
        self.assertTrue(row.endswith("550 5.1.1 no such user"), row)
        as_json = json.loads(self.cli("queue", "--failed", "--json").stdout)
        self.assertEqual([(f["id"], f["recipient"], f["reason"]) for f in as_json],
                         [(failed_id, "gone@example.org", "550 5.1.1 no such user")])

    def test_watch_a_drained_queue(self):
        self.insert("sent", n=2)
        result = self.cli("queue", "--watch")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout.strip().splitlines()[-1],
                         "queue drained: queued 0, sending 0, sent 2, failed 0, suppressed 0 (total 2)")

    def watching(self):
        self.insert("queued", n=3)
        self.insert("sent", n=1)
        proc = subprocess.Popen(self.command(["queue", "--watch", "--interval", "0.1"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(), cwd=self.tmp)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        first = proc.stdout.readline()
        self.assertIn("1/4", first)
        self.assertIn("queued 3", first)
        return proc

    def test_watch_until_drained(self):
        proc = self.watching()
        self.query("UPDATE outbox SET state = 'sent' WHERE state = 'queued'")
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out.strip().splitlines()[-1],
                         "queue drained: queued 0, sending 0, sent 4, failed 0, suppressed 0 (total 4)")

    def test_watch_interrupted(self):
        proc = self.watching()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 130)
        self.assertEqual(err, "")


class CheckTests(CLITestCase):
    def test_good_installation(self):
        result = self.cli("check")
        self.assertEqual(result.returncode, 0, result)
        out = result.stdout
        self.assertIn(f"ok    config: {self.config_path}", out)
        self.assertIn("ok    database: reachable", out)
        self.assertIn("migrations current", out)
        self.assertIn("ok    template plain: subject, text\n", out)
        self.assertIn("ok    template welcome: subject, text, html\n", out)
        self.assertTrue(out.strip().endswith("checks passed"), out)

    def test_broken_operator_templates(self):
        folder = self.tmp / "templates"
        (folder / "email").mkdir(parents=True)
        (folder / "web").mkdir()
        (folder / "email" / "broken.subject.txt").write_text("Hi {{ name }\n")
        (folder / "email" / "broken.txt").write_text("Body\n")
        (folder / "email" / "fine.subject.txt").write_text("Fine\n")
        (folder / "email" / "fine.txt").write_text("{% if x %}x{% endif %}\n")
        (folder / "web" / "page.html").write_text("{% for x in y %}\n")
        (folder / "web" / "ok.html").write_text("<p>{{ x }}</p>\n")
        self.config_path = self.write_config(
            "templates.toml", f"[templates]\ndir = {json.dumps(str(folder))}\n")
        result = self.cli("check")
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("FAIL  template broken: template broken.subject.txt line 1", result.stdout)
        self.assertIn("ok    template fine: subject, text\n", result.stdout)
        self.assertIn("ok    template welcome:", result.stdout)
        self.assertIn("FAIL  web template page.html: line 1", result.stdout)
        self.assertIn("ok    web template ok.html", result.stdout)
        self.assertIn("ok    database", result.stdout)
        self.assertIn("template broken", result.stderr)
        self.assertIn("web template page.html", result.stderr)

    def test_unreachable_database_fails_the_check(self):
        self.config_path.write_text(self.config_path.read_text().replace(
            json.dumps(self.dsn), json.dumps(f"dbname=x host={self.tmp / 'no-socket'}")))
        result = self.cli("check")
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("FAIL  database: cannot open the database", result.stdout)
        self.assertIn("ok    template welcome", result.stdout)


class ConfigTests(CLITestCase):
    def test_unknown_key(self):
        self.config_path.write_text(self.config_path.read_text() + "[relay]\nrat = 5\n")
        result = self.cli("queue")
        self.assertOneLineError(result, 2, "emaild: configuration error: relay.rat: unknown key")

    def test_environment_names_the_config(self):
        env = self.env(EMAILD_CONFIG=str(self.config_path))
        self.insert("queued", n=2)
        result = self.cli("queue", "--json", config=False, env=env)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(json.loads(result.stdout)["queued"], 2)
        self.config_path.write_text(self.config_path.read_text() + "[nonsense]\n")
        result = self.cli("queue", config=False, env=env)
        self.assertOneLineError(result, 2, "configuration error: nonsense: unknown section")

    def test_missing_config_file(self):
        self.config_path = self.tmp / "absent.toml"
        self.assertOneLineError(self.cli("check"), 2, "absent.toml does not exist")


class QueueSummaryTests(unittest.TestCase):
    def test_every_state_and_class(self):
        summary = queue_summary({"queued": {"bulk": 2}, "failed": {"bulk": 1, "default": 4}})
        self.assertEqual(list(summary), ["queued", "sending", "sent", "failed", "suppressed",
                                         "total", "by_class"])
        self.assertEqual(summary["total"], 7)
        self.assertEqual(summary["failed"], 5)
        self.assertEqual(summary["by_class"], {
            "bulk": {"queued": 2, "sending": 0, "sent": 0, "failed": 1, "suppressed": 0},
            "default": {"queued": 0, "sending": 0, "sent": 0, "failed": 4, "suppressed": 0},
        })
