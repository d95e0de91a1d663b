"""Routes: unsubscribe (see the module docstring once written)."""
