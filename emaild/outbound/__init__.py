"""Outbound mail: the outbox, its sender, and the transports it delivers through."""
