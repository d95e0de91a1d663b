"""
C{emaild lti}: the tool's LTI 1.3 signing keys (see L{emaild.people.lti13_keys}).

    emaild lti keys                 list the keys (the signing key last)
    emaild lti rotate-key           add a new key; it signs from now on
    emaild lti retire-key KID       stop publishing an old key
    emaild course sync COURSE       fetch a course's roster (NRPS) now

Keys live under C{<state_dir>/lti/keys/}; a running daemon reads them from
there on every request, so no restart is needed.  Retire a key only once
every platform has fetched the new JWKS (a day is plenty for the LMSes we
know, which cache for at most a few hours).
"""

from __future__ import annotations

from emaild.cli_output import CliError
from emaild.people.lti13_keys import ToolKeyError, ToolKeys


def add_lti_commands(commands, common) -> None:
    lti = commands.add_parser(
        "lti", parents=[common], help="manage the LTI 1.3 tool keys",
        description="List, rotate and retire the RSA keys emaild signs LTI 1.3 messages with "
                    "(published at <public_url>/lti/jwks.json).")
    actions = lti.add_subparsers(dest="lti_command", metavar="ACTION", required=True)
    actions.add_parser("keys", help="list the keys").set_defaults(func=_keys)
    actions.add_parser("rotate-key", help="add a new signing key").set_defaults(func=_rotate)
    retire = actions.add_parser("retire-key", help="stop publishing an old key")
    retire.add_argument("kid", metavar="KID")
    retire.set_defaults(func=_retire)

    course = commands.add_parser(
        "course", parents=[common], help="course rosters from LTI 1.3 platforms",
        description="Fetch a course's roster from its platform (Names and Role Provisioning "
                    "Services) now, as a launch does at most once per [lti13] nrps_interval.")
    course_actions = course.add_subparsers(dest="course_command", metavar="ACTION",
                                           required=True)
    sync = course_actions.add_parser("sync", help="fetch the roster now")
    sync.add_argument("course", metavar="COURSE", help="its key (context_id) or id")
    sync.set_defaults(func=_sync)


def _tool_keys(config) -> ToolKeys:
    return ToolKeys(config.state_dir / "lti" / "keys")


async def _keys(reactor, args, config, db, embedded) -> int:
    keys = _tool_keys(config)
    keys.ensure()
    kids = keys.kids()
    for kid in kids:
        print(f"{kid}{'  (signing)' if kid == kids[-1] else ''}")
    return 0


async def _rotate(reactor, args, config, db, embedded) -> int:
    keys = _tool_keys(config)
    old = keys.kids()
    kid = keys.rotate()
    print(kid)
    if old:
        print(f"still published until retired: {', '.join(old)} "
              "(emaild lti retire-key KID, once the platforms have the new key)")
    return 0


async def _retire(reactor, args, config, db, embedded) -> int:
    try:
        _tool_keys(config).retire(args.kid)
    except ToolKeyError as e:
        raise CliError(str(e)) from None
    print(f"retired {args.kid}")
    return 0


async def _sync(reactor, args, config, db, embedded) -> int:
    from emaild.cli import _open
    from emaild.cli_digest import find_course
    from emaild.people.lti13_nrps import NrpsError, Rosters
    from emaild.people.store import PeopleStore

    await _open(db, embedded)
    course = await find_course(PeopleStore(db), args.course)
    try:
        totals = await Rosters(reactor, config, db, _tool_keys(config)).sync_now(course.id)
    except NrpsError as e:
        raise CliError(f"course {args.course}: {e}") from None
    print(f"course {course.context_id}: {totals['members']} members ({totals['new']} new, "
          f"{totals['updated']} updated, {totals['left']} left) in {totals['pages']} pages")
    return 0
