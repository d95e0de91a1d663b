"""
Sender authentication for the group relay: SPF (L{spf}), DKIM (L{dkim}) and
DMARC alignment (L{dmarc}) of a received post, over DNS that never blocks the
reactor (L{dns}), combined into a L{verdict.Verdict} and the relay's policy
(L{policy}).
"""
