-- Each target's first unfinished message, found directly. An ordered tenant's claim takes the head
-- of each of its targets through this index instead of walking every waiting message and checking
-- it for an earlier one: that cost about 200 ms per claim at 36 000 waiting messages of one
-- target, so a backlog drained in time that grew with the square of its depth. Partial: finished
-- messages (kept until they are purged) are not in it.
CREATE INDEX queue_messages_heads ON queue_messages(tenant_id, target, seq)
    WHERE state IN ('queued', 'delivering');
-- The deliveries in flight, which hold their target back: a handful of rows, so that the claim's
-- look at them never reads the waiting messages (PostgreSQL chose to, through the index above,
-- on a table without statistics).
CREATE INDEX queue_messages_in_flight ON queue_messages(tenant_id, target, seq)
    WHERE state = 'delivering';
