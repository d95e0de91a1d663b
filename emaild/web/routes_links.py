"""Routes: links (see the module docstring once written)."""
