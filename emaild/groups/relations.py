"""
The groups part's tables as other parts may read them inside one of their
own statements: each name is a parenthesised SELECT with a fixed set of
columns, to be used as C{FROM}/C{JOIN} items (C{JOIN {GROUPS} g ON ...}).

See L{emaild.people.relations} for why (one statement, no extra round trip,
and the owning part the only one that knows its tables' shape); writes go
through L{emaild.groups.store}.
"""

#: groups: id, course_id, name
GROUPS = "(SELECT id, course_id, name FROM groups)"

#: current memberships (not left): group_id, person_id, joined_at
CURRENT_GROUP_MEMBERS = (
    "(SELECT group_id, person_id, joined_at FROM group_members WHERE left_at IS NULL)")

#: posts: id, group_id, thread_id (None for a thread's first post), subject,
#: created_at
GROUP_POSTS = "(SELECT id, group_id, thread_id, subject, created_at FROM group_posts)"
