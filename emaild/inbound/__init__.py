"""Inbound mail: emaild's own SMTP server for the anonymous group relay."""
