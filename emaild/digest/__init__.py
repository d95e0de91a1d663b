"""
Weekly updates (digests) and staff announcements.
"""
