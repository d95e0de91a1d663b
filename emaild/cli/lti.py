"""
C{emaild lti}: the tool's LTI 1.3 signing keys (see L{emaild.people.lti13_keys}).

    emaild lti keys                 list the keys (the signing key last)
    emaild lti rotate-key           add a new key; it signs from now on
    emaild lti retire-key KID       stop publishing an old key

Keys live under C{<state_dir>/lti/keys/}; a running daemon reads them from
there on every request, so no restart is needed.  Retire a key only once
every platform has fetched the new JWKS (a day is plenty for the LMSes we
know, which cache for at most a few hours).
"""

from __future__ import annotations

from emaild.cli.output import CliError
from emaild.people.lti13_keys import ToolKeyError


def add_parser(commands, common) -> None:
    lti = commands.add_parser(
        "lti", parents=[common], help="manage the LTI 1.3 tool keys",
        description="List, rotate and retire the RSA keys emaild signs LTI 1.3 messages with "
                    "(published at <public_url>/lti/jwks.json).")
    actions = lti.add_subparsers(dest="lti_command", metavar="ACTION", required=True)
    actions.add_parser("keys", help="list the keys").set_defaults(func=keys)
    actions.add_parser("rotate-key", help="add a new signing key").set_defaults(func=rotate)
    retire_parser = actions.add_parser("retire-key", help="stop publishing an old key")
    retire_parser.add_argument("kid", metavar="KID")
    retire_parser.set_defaults(func=retire)


async def keys(parts, args) -> int:
    tool_keys = parts.get_tool_keys()
    tool_keys.ensure()
    kids = tool_keys.kids()
    for kid in kids:
        print(f"{kid}{'  (signing)' if kid == kids[-1] else ''}")
    return 0


async def rotate(parts, args) -> int:
    tool_keys = parts.get_tool_keys()
    old = tool_keys.kids()
    kid = tool_keys.rotate()
    print(kid)
    if old:
        print(f"still published until retired: {', '.join(old)} "
              "(emaild lti retire-key KID, once the platforms have the new key)")
    return 0


async def retire(parts, args) -> int:
    try:
        parts.get_tool_keys().retire(args.kid)
    except ToolKeyError as e:
        raise CliError(str(e)) from None
    print(f"retired {args.kid}")
    return 0
