"""Inbound mail: the SMTP server, what it stores, and the group relay."""
