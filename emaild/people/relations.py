"""
The people part's tables as other parts may read them inside one of their
own statements: each name is a parenthesised SELECT with a fixed set of
columns, to be used as C{FROM}/C{JOIN} items (C{JOIN {PEOPLE} p ON ...}).

A part that needs a person's name or a course's members in the same
statement as its own rows joins these instead of naming the people part's
tables, so the people part is the one place that knows those tables' shape.
PostgreSQL pulls such simple subqueries up into the outer query: the plan is
the one a direct join gets.  Writes never go through here; they go through
the people store's functions.
"""

#: people: id, email (None when never given), display_name
PEOPLE = "(SELECT id, email, display_name FROM people)"

#: courses: id, consumer_key, context_id, title ('' when it has none)
COURSES = "(SELECT id, consumer_key, context_id, title FROM courses)"

#: course memberships: course_id, person_id, roles (LTI roles as sent)
COURSE_MEMBERS = "(SELECT course_id, person_id, roles FROM course_members)"
