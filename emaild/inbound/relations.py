"""
The inbound part's tables as other parts may read them inside one of their
own statements (see L{emaild.people.relations} for the convention): each
name is a parenthesised SELECT with a fixed set of columns.
"""

#: one row per (received message, recipient address): id, message_id
INBOUND_RECIPIENTS = "(SELECT id, message_id FROM inbound_recipients)"
