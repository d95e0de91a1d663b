"""
Notifications: "X is active in your group" mails (L{notifier}) and error
reports to the operators (L{errors}).
"""
