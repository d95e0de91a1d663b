"""
Mail-format helpers several parts share: address checks
(L{emaild.mailformat.addresses}), header lines no user data can break out
of (L{emaild.mailformat.headers}) and text MIME parts
(L{emaild.mailformat.parts}).

A leaf: it imports nothing else from emaild, so outbound, inbound and
people can all use it without importing each other.
"""
