"""
Which LTI roles make a course member staff.  The people part owns course
memberships and their roles; the digest (who gets the weekly update) and
the staff pages ask here.
"""

from __future__ import annotations

import re
from typing import Iterable

#: LTI roles that make a course member staff (Instructor or Administrator):
#: the LTI 1.1 short names and URNs (context, institution and system roles,
#: with any sub-role such as C{Instructor/TeachingAssistant}) and the LTI 1.3
#: vocabulary URIs.  Used as a PostgreSQL regular expression too (C{~*}).
STAFF_ROLE = (
    r"^((urn:lti:(role|instrole|sysrole):ims/lis/)?(Instructor|Administrator)(/.*)?"
    r"|https?://purl\.imsglobal\.org/vocab/lis/v2/(membership|institution/person|system/person)"
    r"(#(Instructor|Administrator)|/(Instructor|Administrator)#.*))$"
)
_STAFF = re.compile(STAFF_ROLE, re.IGNORECASE)


def is_staff_role(role: str) -> bool:
    return bool(_STAFF.match(role.strip()))


def is_staff(roles: Iterable[str]) -> bool:
    return any(is_staff_role(r) for r in roles or ())
