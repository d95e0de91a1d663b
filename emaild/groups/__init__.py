"""Course groups: members, their personal reply addresses, posts and visits."""
