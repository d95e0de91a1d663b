"""
C{emaild person add|list|import}, run as real subprocesses against a real
database.
"""

from __future__ import annotations

import json

from tests.cli.support import PersonCLITestCase


class AddTests(PersonCLITestCase):
    def test_add_then_update_by_address(self):
        result = self.cli("person", "add", "ada@example.org", "--name", "Ada  Lovelace")
        self.assertEqual(result.returncode, 0, result)
        ((person_id, email, name),) = self.people()
        self.assertEqual(result.stdout, f"added person {person_id}: Ada Lovelace <ada@example.org>\n")
        self.assertEqual((email, name), ("ada@example.org", "Ada Lovelace"))

        result = self.cli("person", "add", "ADA@example.org", "--name", "Augusta Ada King")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout,
                         f"updated person {person_id}: Augusta Ada King <ada@example.org>\n")
        # no name given: the stored one stays
        result = self.cli("person", "add", "ada@example.org")
        self.assertEqual(result.stdout,
                         f"updated person {person_id}: Augusta Ada King <ada@example.org>\n")
        self.assertEqual(self.people(), [(person_id, "ada@example.org", "Augusta Ada King")])

    def test_add_to_a_course_made_by_hand(self):
        result = self.cli("person", "add", "ada@example.org", "--course", "Logic")
        self.assertEqual(result.returncode, 0, result)
        self.assertTrue(result.stdout.endswith("<ada@example.org> in course Logic\n"), result.stdout)
        result = self.cli("person", "add", "bob@example.org", "--name", "Bob", "--course", "Logic")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(self.members(), [("", "Logic", "ada@example.org", []),
                                          ("", "Logic", "bob@example.org", [])])
        self.assertEqual(self.query("SELECT count(*) FROM courses"), [(1,)])

    def test_add_to_an_lti_course_by_its_context_id(self):
        self.lti_course("moodle", "course-v1:Logic+2026", "Logic 101")
        result = self.cli("person", "add", "ada@example.org", "--course", "course-v1:Logic+2026")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(self.members(), [("moodle", "course-v1:Logic+2026", "ada@example.org", [])])
        self.assertEqual(self.query("SELECT count(*) FROM courses"), [(1,)])

    def test_an_ambiguous_course_key(self):
        self.lti_course("moodle", "3")
        self.lti_course("canvas", "3")
        result = self.cli("person", "add", "ada@example.org", "--course", "3")
        self.assertOneLineError(result, 1, "not added", "course '3' is ambiguous", "'canvas'",
                                "'moodle'")
        self.assertEqual(self.people(), [])

    def test_a_bad_address(self):
        result = self.cli("person", "add", "not-an-address", "--name", "X")
        self.assertOneLineError(result, 1, "not added", "not a valid e-mail address")
        result = self.cli("person", "add", " ")
        self.assertOneLineError(result, 1, "address is empty")
        self.assertEqual(self.people(), [])

    def test_argument_errors(self):
        self.assertOneLineError(self.cli("person"), 2, "SUBCOMMAND")
        self.assertOneLineError(self.cli("person", "add"), 2, "EMAIL")
        self.assertOneLineError(self.cli("person", "add", "a@example.org", "--course", ""), 2,
                                "--course is empty")
        self.assertOneLineError(self.cli("person", "frobnicate"), 2, "frobnicate")
        self.assertOneLineError(self.cli(), 2, "person")

    def test_database_unreachable(self):
        self.config_path.write_text(self.config_path.read_text().replace(
            json.dumps(self.dsn), json.dumps(f"dbname=x user=postgres host={self.tmp / 'no-socket'}")))
        result = self.cli("person", "add", "ada@example.org")
        self.assertOneLineError(result, 1, "cannot open the database")


class ListTests(PersonCLITestCase):
    def fill(self):
        for args in (("ada@example.org", "--name", "Ada Lovelace", "--course", "Logic"),
                     ("bob@example.org", "--course", "Sets"),
                     ("cy@example.org", "--name", "Cy Zoë")):
            self.assertEqual(self.cli("person", "add", *args).returncode, 0)
        ada = self.people()[0][0]
        course = self.lti_course("moodle", "course-v1:Logic+2026", "Logic 101")
        self.query("INSERT INTO lti_identities (consumer_key, user_id, person_id)"
                   " VALUES ('moodle', 'u-1', %s)", (ada,))
        self.query("INSERT INTO course_members (course_id, person_id, roles) VALUES"
                   " (%s, %s, '{Learner,urn:lti:role:ims/lis/TeachingAssistant}')", (course, ada))
        ((group,),) = self.query("INSERT INTO groups (course_id, name) VALUES (%s, 'Team 4')"
                                 " RETURNING id", (course,))
        self.query("INSERT INTO group_members (group_id, person_id) VALUES (%s, %s)", (group, ada))
        return ada

    def test_table(self):
        ada = self.fill()
        result = self.cli("person", "list")
        self.assertEqual(result.returncode, 0, result)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["id", "email", "name", "lti", "groups", "courses"])
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[1].lstrip().startswith(f"{ada}  ada@example.org  Ada Lovelace"),
                        lines[1])
        self.assertTrue(lines[1].endswith(
            "moodle  Team 4  Logic, course-v1:Logic+2026 (Learner, TeachingAssistant)"), lines[1])
        self.assertIn("bob@example.org", lines[2])
        self.assertTrue(lines[2].endswith("-       -       Sets"), lines[2])
        self.assertIn("Cy Zoë", lines[3])

    def test_json_and_course_filter(self):
        ada = self.fill()
        result = self.cli("person", "list", "--json")
        self.assertEqual(result.returncode, 0, result)
        people = json.loads(result.stdout)
        self.assertEqual([p["email"] for p in people],
                         ["ada@example.org", "bob@example.org", "cy@example.org"])
        self.assertEqual(people[0], {
            "id": ada, "email": "ada@example.org", "name": "Ada Lovelace",
            "identities": [{"consumer_key": "moodle", "user_id": "u-1"}],
            "courses": [
                {"consumer_key": "", "context_id": "Logic", "title": "", "roles": []},
                {"consumer_key": "moodle", "context_id": "course-v1:Logic+2026",
                 "title": "Logic 101", "roles": ["Learner", "urn:lti:role:ims/lis/TeachingAssistant"]}],
            "groups": [{"course": "course-v1:Logic+2026", "name": "Team 4"}],
            "suppressed": None,
        })
        self.assertEqual(people[2]["name"], "Cy Zoë")
        in_sets = json.loads(self.cli("person", "list", "--course", "Sets", "--json").stdout)
        self.assertEqual([p["email"] for p in in_sets], ["bob@example.org"])
        in_lti = json.loads(self.cli("person", "list", "--course", "course-v1:Logic+2026",
                                     "--json").stdout)
        self.assertEqual([p["email"] for p in in_lti], ["ada@example.org"])

    def test_suppressed_addresses_are_shown(self):
        self.fill()
        self.query("INSERT INTO suppressions (address, reason, created_at) VALUES"
                   " ('bob@example.org', 'hard bounces: 3', '2026-03-01 10:00:00+00'),"
                   " ('nobody@example.org', 'complaint', now())")
        self.query("UPDATE people SET email = 'Bob@Example.org' WHERE email = 'bob@example.org'")
        lines = self.cli("person", "list").stdout.splitlines()
        self.assertEqual(len(lines), 5)
        self.assertIn(" Bob@Example.org (suppressed) ", lines[2])
        self.assertNotIn("suppressed", lines[1] + lines[3])
        self.assertEqual(lines[4], "1 suppressed address: nothing is sent to them "
                                   "(emaild queue --suppressed says why)")
        people = json.loads(self.cli("person", "list", "--json").stdout)
        self.assertEqual([p["suppressed"] for p in people], [
            None, {"reason": "hard bounces: 3", "since": "2026-03-01T10:00:00+00:00"}, None])

    def test_empty_and_unknown_course(self):
        result = self.cli("person", "list", "--json")
        self.assertEqual((result.returncode, json.loads(result.stdout)), (0, []))
        result = self.cli("person", "list")
        self.assertEqual(result.stdout.split(), ["id", "email", "name", "lti", "groups", "courses"])
        self.assertOneLineError(self.cli("person", "list", "--course", "Nope"), 1, "no course 'Nope'")


class ImportTests(PersonCLITestCase):
    def test_good_and_bad_rows(self):
        self.cli("person", "add", "ada@example.org", "--name", "Ada")
        path = self.tmp / "people.csv"
        path.write_bytes(
            "\ufeffEmail, Name ,course\n"
            "ADA@example.org,Ada Lovelace,Logic\n"
            "not-an-address,Bob,Logic\n"
            ",Nobody,Logic\n"
            "cy@example.org,,\n"
            "dan@example.org,Dan,Logic,surplus\n"
            "\u00e9va@example.org,\u00c9va,Logique\n"
            "fay@example.org,\"Fay\nFairfax\",Sets\n"
            "gus@example.org,Gus\n".encode("utf-8"))
        result = self.cli("person", "import", str(path))
        self.assertEqual(result.returncode, 1, result)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "imported 4 people (3 new, 1 updated), rejected 4 rows")
        self.assertTrue(lines[1].startswith("line 3: not-an-address: "), lines)
        self.assertIn("not a valid e-mail address", lines[1])
        self.assertEqual(lines[2], "line 4: (empty): recipient address is empty")
        self.assertEqual(lines[3], "line 6: dan@example.org: 1 more cells than the header's 3 columns")
        self.assertTrue(lines[4].startswith("line 7: \u00e9va@example.org: "), lines)
        self.assertEqual(lines[5], "the 4 rejected rows were not imported; fix and import them again")
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual([p[1:] for p in self.people()], [
            ("ada@example.org", "Ada Lovelace"), ("cy@example.org", ""),
            ("fay@example.org", "Fay Fairfax"), ("gus@example.org", "Gus")])
        self.assertEqual(self.members(), [("", "Logic", "ada@example.org", []),
                                          ("", "Sets", "fay@example.org", [])])

    def test_importing_twice_updates(self):
        path = self.tmp / "people.csv"
        path.write_text("email,name\nada@example.org,Ada\nbob@example.org,Bob\n")
        result = self.cli("person", "import", str(path))
        self.assertEqual((result.returncode, result.stdout),
                         (0, "imported 2 people (2 new, 0 updated), rejected 0 rows\n"))
        path.write_text("email,name\nada@example.org,Ada L.\nbob@example.org,\n")
        result = self.cli("person", "import", str(path))
        self.assertEqual((result.returncode, result.stdout),
                         (0, "imported 2 people (0 new, 2 updated), rejected 0 rows\n"))
        self.assertEqual([p[1:] for p in self.people()],
                         [("ada@example.org", "Ada L."), ("bob@example.org", "Bob")])

    def test_many_rows(self):
        path = self.tmp / "many.csv"
        with open(path, "w", encoding="utf-8") as f:
            f.write("email,name,course\n")
            for i in range(1200):
                f.write(f"user{i}@example.org,User {i},{'AB'[i % 2]}\n")
        result = self.cli("person", "import", str(path))
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, "imported 1200 people (1200 new, 0 updated), rejected 0 rows\n")
        self.assertEqual(self.query("SELECT count(*) FROM people"), [(1200,)])
        self.assertEqual(self.query("SELECT c.context_id, count(*) FROM course_members m"
                                    " JOIN courses c ON c.id = m.course_id GROUP BY 1 ORDER BY 1"),
                         [("A", 600), ("B", 600)])

    def test_an_ambiguous_course_rejects_its_rows(self):
        self.lti_course("moodle", "3")
        self.lti_course("canvas", "3")
        path = self.tmp / "p.csv"
        path.write_text("email,course\nada@example.org,3\nbob@example.org,\n")
        result = self.cli("person", "import", str(path))
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.stdout.splitlines()[:2], [
            "imported 1 person (1 new, 0 updated), rejected 1 row",
            "line 2: ada@example.org: course '3' is ambiguous: LTI consumers 'canvas', 'moodle' "
            "each have a course with that id"])
        self.assertEqual([p[1] for p in self.people()], ["bob@example.org"])

    def test_bad_files(self):
        missing = self.cli("person", "import", str(self.tmp / "none.csv"))
        self.assertOneLineError(missing, 2, "none.csv")
        path = self.tmp / "p.csv"
        path.write_text("mail,name\na@example.org,A\n")
        self.assertOneLineError(self.cli("person", "import", str(path)), 1,
                                "no 'email' column", "'mail', 'name'")
        path.write_text("email,nmae\na@example.org,A\n")
        self.assertOneLineError(self.cli("person", "import", str(path)), 1,
                                "unknown columns 'nmae'", "expected email, name")
        path.write_text("email,name,Email\na@example.org,A,b@example.org\n")
        self.assertOneLineError(self.cli("person", "import", str(path)), 1, "repeats a column")
        path.write_text("")
        self.assertOneLineError(self.cli("person", "import", str(path)), 1, "is empty")
        path.write_text("email,name\n")
        self.assertOneLineError(self.cli("person", "import", str(path)), 1, "has no rows")
        self.assertEqual(self.people(), [])

    def test_undecodable_bytes_stop_the_reading(self):
        path = self.tmp / "latin1.csv"
        good = "".join(f"user{i}@example.org,U\n" for i in range(3000))
        path.write_bytes(b"email,name\n" + good.encode() + b"x@example.org,Caf\xe9\n")
        result = self.cli("person", "import", str(path))
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("latin1.csv: cannot read past line", result.stderr)
        imported = self.query("SELECT count(*) FROM people")[0][0]
        self.assertGreaterEqual(imported, 500)
        self.assertTrue(result.stdout.startswith(f"imported {imported} people"), result.stdout)
