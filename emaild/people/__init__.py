"""People: learners and staff, their LTI identities, courses and groups."""
