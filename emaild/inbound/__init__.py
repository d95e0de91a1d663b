"""Inbound mail: emaild's own SMTP server and the anonymous group relay."""
