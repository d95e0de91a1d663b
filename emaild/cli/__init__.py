"""
The C{emaild} command: queue mail, watch the queue, manage people and
groups, send announcements and weekly updates, check an installation.

One module per command (L{emaild.cli.send}, L{emaild.cli.queue}, ...),
listed in L{emaild.cli.main.COMMANDS}; what they share is in
L{emaild.cli.runtime} (the parts, the database, Ctrl-C, the progress bar),
L{emaild.cli.output} (text and tables), L{emaild.cli.csv_input} (CSV
files), L{emaild.cli.arguments} and L{emaild.cli.lookup} (finding a course,
a person or a group by what the user typed).  C{emaild.cli.main.main} is
the entry point.
"""
