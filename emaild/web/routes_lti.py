"""Routes: lti (see the module docstring once written)."""
