"""Run bookkeeping: result identities, tracking, the generate stage's parts."""
