"""
Links in mail: short, unguessable, expiring tokens for login-and-go-to and
unsubscribe (C{/email/<token>}, C{/unsubscribe/<token>}).
"""
