"""Routes: home (see the module docstring once written)."""
