"""Inbound mail for the anonymous group relay: classify, bounces, rewriting."""
