"""
C{emaild group add|list|members|import|join|leave}, run as real subprocesses
against a real database.
"""

from __future__ import annotations

import json
import re

from emaild.groups.addresses import ReplyToken, reply_addresses
from tests.cli.support import PersonCLITestCase
from tests.support import make_config

ADDRESS = re.compile(r"group-[a-z0-9]+@localhost")


class GroupCLITestCase(PersonCLITestCase):
    def groups(self):
        return self.query("SELECT g.id, c.consumer_key, c.context_id, g.name FROM groups g"
                          " JOIN courses c ON c.id = g.course_id ORDER BY g.id")

    def group_members(self):
        return self.query(
            "SELECT g.name, p.email, m.left_at IS NULL FROM group_members m"
            " JOIN groups g ON g.id = m.group_id JOIN people p ON p.id = m.person_id"
            " ORDER BY g.id, p.email")

    def add_group(self, course, name) -> int:
        result = self.cli("group", "add", "--course", course, name)
        self.assertEqual(result.returncode, 0, result)
        return int(result.stdout)

    def reply_address(self, group_id, email) -> str:
        ((person_id, hi, lo),) = self.query(
            "SELECT m.person_id, m.reply_secret_hi, m.reply_secret_lo FROM group_members m"
            " JOIN people p ON p.id = m.person_id WHERE m.group_id = %s AND p.email = %s",
            (group_id, email))
        codec = reply_addresses(make_config(self.tmp / "state", self.dsn))
        return codec.address(ReplyToken(group_id, person_id, hi, lo))


class AddAndListTests(GroupCLITestCase):
    def test_add_prints_the_id_and_is_idempotent(self):
        group_id = self.add_group("Logic", "Team  4")
        self.assertEqual(self.groups(), [(group_id, "", "Logic", "Team 4")])
        result = self.cli("group", "add", "--course", "Logic", "Team 4")
        self.assertEqual((result.returncode, result.stdout), (0, f"{group_id}\n"))
        self.assertIn("already has a group 'Team 4'", result.stderr)
        self.assertEqual(len(self.groups()), 1)

    def test_add_to_an_lti_course_and_an_ambiguous_key(self):
        self.lti_course("moodle", "course-v1:Logic+2026", "Logic 101")
        group_id = self.add_group("course-v1:Logic+2026", "A")
        self.assertEqual(self.groups(), [(group_id, "moodle", "course-v1:Logic+2026", "A")])
        self.lti_course("moodle", "3")
        self.lti_course("canvas", "3")
        result = self.cli("group", "add", "--course", "3", "B")
        self.assertOneLineError(result, 1, "not added", "course '3' is ambiguous")
        self.assertEqual(len(self.groups()), 1)

    def test_bad_arguments(self):
        self.assertOneLineError(self.cli("group"), 2, "SUBCOMMAND")
        self.assertOneLineError(self.cli("group", "add", "Team"), 2, "--course")
        self.assertOneLineError(self.cli("group", "add", "--course", " ", "Team"), 2,
                                "--course is empty")
        self.assertOneLineError(self.cli("group", "add", "--course", "Logic", "  "), 2,
                                "NAME is empty")
        self.assertOneLineError(self.cli("group", "members"), 2, "GROUP")
        self.assertOneLineError(self.cli("group", "members", "Team"), 2, "COURSE_KEY/NAME")
        self.assertOneLineError(self.cli("group", "join", "1"), 2, "EMAIL")
        self.assertOneLineError(self.cli("group", "frob"), 2, "frob")
        self.assertEqual(self.groups(), [])

    def test_list(self):
        logic = self.add_group("Logic", "Team 4")
        sets = self.add_group("Sets", "Ω team")
        self.cli("person", "add", "ada@example.org")
        self.cli("person", "add", "bob@example.org")
        self.assertEqual(self.cli("group", "join", str(logic), "ada@example.org").returncode, 0)
        self.assertEqual(self.cli("group", "join", str(logic), "bob@example.org").returncode, 0)
        self.assertEqual(self.cli("group", "leave", str(logic), "bob@example.org").returncode, 0)
        result = self.cli("group", "list")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual([line.split(None, 3) for line in result.stdout.splitlines()], [
            ["id", "course", "members", "name"],
            [str(logic), "Logic", "1", "Team 4"],
            [str(sets), "Sets", "0", "Ω team"]])
        as_json = json.loads(self.cli("group", "list", "--course", "Sets", "--json").stdout)
        self.assertEqual(as_json, [{"id": sets, "name": "Ω team", "course": "Sets",
                                    "consumer_key": "", "course_title": "Sets", "members": 0}])
        self.assertOneLineError(self.cli("group", "list", "--course", "Nope"), 1,
                                "no course 'Nope'")
        result = self.cli("group", "list", "--course", "Logic", "--json")
        self.assertEqual([g["id"] for g in json.loads(result.stdout)], [logic])


class MembershipTests(GroupCLITestCase):
    def test_join_members_leave(self):
        group_id = self.add_group("Logic", "Team 4")
        self.cli("person", "add", "ada@example.org", "--name", "Ada Lovelace")
        self.cli("person", "add", "bob@example.org")

        result = self.cli("group", "join", "Logic/Team 4", "ADA@example.org")
        self.assertEqual(result.returncode, 0, result)
        ada_address = self.reply_address(group_id, "ada@example.org")
        self.assertEqual(result.stdout, f"Ada Lovelace <ada@example.org> joined group {group_id}"
                                        f" (Team 4 in Logic); their reply address: {ada_address}\n")
        # joining a group makes them a member of its course
        self.assertEqual(self.members(), [("", "Logic", "ada@example.org", [])])
        result = self.cli("group", "join", str(group_id), "ada@example.org")
        self.assertIn("is already a member of", result.stdout)
        self.assertEqual(self.reply_address(group_id, "ada@example.org"), ada_address)
        self.assertEqual(self.cli("group", "join", str(group_id), "bob@example.org").returncode, 0)
        bob_address = self.reply_address(group_id, "bob@example.org")

        result = self.cli("group", "members", str(group_id))
        self.assertEqual(result.returncode, 0, result)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"group {group_id} (Team 4 in Logic): 2 current members")
        self.assertEqual(lines[1].split(), ["name", "email", "joined", "(UTC)", "reply", "address"])
        # by name (a member without one shows "-")
        self.assertTrue(lines[2].startswith("-             bob@example.org  20"), lines[2])
        self.assertTrue(lines[2].endswith(bob_address), lines[2])
        self.assertTrue(lines[3].startswith("Ada Lovelace  ada@example.org"), lines[3])
        self.assertTrue(lines[3].endswith(ada_address), lines[3])

        result = self.cli("group", "leave", "Logic/Team 4", "bob@example.org")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, f"<bob@example.org> left group {group_id} (Team 4 in "
                                        f"Logic); their reply address {bob_address} no longer"
                                        " works\n")
        self.assertOneLineError(self.cli("group", "leave", str(group_id), "bob@example.org"), 1,
                                "<bob@example.org> is not a member of group")

        result = self.cli("group", "members", str(group_id))
        self.assertNotIn("bob@example.org", result.stdout)
        self.assertIn("1 current member\n", result.stdout)
        result = self.cli("group", "members", str(group_id), "--all")
        bob_line = [line for line in result.stdout.splitlines() if "bob@" in line][0]
        self.assertIn(" left 20", bob_line)
        self.assertTrue(bob_line.endswith(f"{bob_address} (dead)"), bob_line)

        members = json.loads(self.cli("group", "members", str(group_id), "--all", "--json").stdout)
        self.assertEqual([(m["email"], m["reply_address"], m["reply_address_works"],
                           m["left_at"] is None) for m in members],
                         [("bob@example.org", bob_address, False, False),
                          ("ada@example.org", ada_address, True, True)])
        self.assertEqual(members[1]["name"], "Ada Lovelace")
        self.assertIsNotNone(members[1]["joined_at"])
        current = json.loads(self.cli("group", "members", str(group_id), "--json").stdout)
        self.assertEqual([m["email"] for m in current], ["ada@example.org"])

        # rejoining gives a new address; the old one stays dead
        self.assertEqual(self.cli("group", "join", str(group_id), "bob@example.org").returncode, 0)
        self.assertNotEqual(self.reply_address(group_id, "bob@example.org"), bob_address)

    def test_unknown_things(self):
        group_id = self.add_group("Logic", "Team 4")
        self.cli("person", "add", "ada@example.org")
        self.assertOneLineError(self.cli("group", "members", "999999"), 1, "no group 999999")
        self.assertOneLineError(self.cli("group", "members", "Logic/Team 5"), 1,
                                "no group 'Logic/Team 5'")
        self.assertOneLineError(self.cli("group", "join", str(group_id), "nobody@example.org"), 1,
                                "nobody has the address nobody@example.org", "person add")
        self.assertOneLineError(self.cli("group", "join", str(group_id), "not-an-address"), 1,
                                "not a valid e-mail address")
        self.assertOneLineError(self.cli("group", "leave", "999999", "ada@example.org"), 1,
                                "no group 999999")
        self.assertEqual(self.group_members(), [])

    def test_a_course_key_with_slashes_and_an_ambiguous_name(self):
        old_edx = self.add_group("MITx/6.00x/2013_Spring", "Team/A")
        self.cli("person", "add", "ada@example.org")
        result = self.cli("group", "join", "MITx/6.00x/2013_Spring/Team/A", "ada@example.org")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn(f"joined group {old_edx} ", result.stdout)
        moodle = self.lti_course("moodle", "7")
        canvas = self.lti_course("canvas", "7")
        self.query("INSERT INTO groups (course_id, name) VALUES (%s, 'G'), (%s, 'G')",
                   (moodle, canvas))
        self.assertOneLineError(self.cli("group", "members", "7/G"), 1,
                                "group '7/G' is ambiguous", "'moodle'", "'canvas'", "use the id")


class ImportTests(GroupCLITestCase):
    def test_good_and_bad_rows(self):
        self.cli("person", "add", "ada@example.org", "--name", "Ada")
        existing = self.add_group("Logic", "Team 1")
        self.lti_course("moodle", "3")
        self.lti_course("canvas", "3")
        path = self.tmp / "groups.csv"
        path.write_bytes(
            "\ufeffEmail , Group,COURSE,name\n"
            "ADA@example.org,Team 1,Logic,Ada Lovelace\n"
            "bob@example.org,Team  2,Logic,\n"
            "not-an-address,Team 1,Logic,X\n"
            "cy@example.org,,Logic,Cy\n"
            "dan@example.org,Team 1,,Dan\n"
            "eve@example.org,Team 1,Logic,Eve,surplus\n"
            "fay@example.org,G,3,Fay\n"
            "gus@example.org,Team 1,Logic,\n".encode("utf-8"))
        result = self.cli("group", "import", str(path))
        self.assertEqual(result.returncode, 1, result)
        lines = result.stdout.splitlines()
        self.assertTrue(lines[1].startswith("line 4: not-an-address: "), lines)
        self.assertIn("not a valid e-mail address", lines[1])
        del lines[1]
        self.assertEqual(lines, [
            "imported 3 rows (3 joined, 0 already members; 2 new people, 1 new group), "
            "rejected 5 rows",
            "line 5: cy@example.org: the group is empty",
            "line 6: dan@example.org: the course is empty",
            "line 7: eve@example.org: 1 more cells than the header's 4 columns",
            "line 8: fay@example.org: course '3' is ambiguous: LTI consumers 'canvas', 'moodle' "
            "each have a course with that id",
            "the 5 rejected rows were not imported; fix and import them again"])
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(self.group_members(), [("Team 1", "ada@example.org", True),
                                                ("Team 1", "gus@example.org", True),
                                                ("Team 2", "bob@example.org", True)])
        self.assertEqual(self.groups()[0], (existing, "", "Logic", "Team 1"))
        self.assertEqual([p[1:] for p in self.people()], [
            ("ada@example.org", "Ada Lovelace"), ("bob@example.org", ""), ("gus@example.org", "")])
        self.assertEqual(self.members(), [("", "Logic", "ada@example.org", []),
                                          ("", "Logic", "bob@example.org", []),
                                          ("", "Logic", "gus@example.org", [])])

        # again: nothing new, and someone who had left joins again
        self.cli("group", "leave", str(existing), "gus@example.org")
        path.write_text("email,group,course\nada@example.org,Team 1,Logic\n"
                        "gus@example.org,Team 1,Logic\n")
        result = self.cli("group", "import", str(path))
        self.assertEqual((result.returncode, result.stdout), (0, (
            "imported 2 rows (1 joined, 1 already members; 0 new people, 0 new groups), "
            "rejected 0 rows\n")))
        self.assertEqual(len(self.group_members()), 3)
        self.assertTrue(all(live for *_, live in self.group_members()))

    def test_many_rows(self):
        path = self.tmp / "many.csv"
        with open(path, "w", encoding="utf-8") as f:
            f.write("email,group,course\n")
            for i in range(1100):
                f.write(f"user{i}@example.org,Team {i % 10},{'AB'[i % 2]}\n")
        result = self.cli("group", "import", str(path))
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, "imported 1100 rows (1100 joined, 0 already members; "
                                        "1100 new people, 10 new groups), rejected 0 rows\n")
        self.assertEqual(self.query("SELECT count(*) FROM group_members"), [(1100,)])
        self.assertEqual(self.query("SELECT count(*) FROM groups"), [(10,)])

    def test_bad_files(self):
        missing = self.cli("group", "import", str(self.tmp / "none.csv"))
        self.assertOneLineError(missing, 2, "none.csv")
        path = self.tmp / "g.csv"
        path.write_text("email,course\na@example.org,Logic\n")
        self.assertOneLineError(self.cli("group", "import", str(path)), 1,
                                "no 'group' column",
                                "expected email, group, course and name (optional)")
        path.write_text("email,group,course,team\na@example.org,A,Logic,x\n")
        self.assertOneLineError(self.cli("group", "import", str(path)), 1,
                                "unknown columns 'team'")
        path.write_text("email,group,course\n")
        self.assertOneLineError(self.cli("group", "import", str(path)), 1, "has no rows")
        self.assertEqual(self.groups(), [])
