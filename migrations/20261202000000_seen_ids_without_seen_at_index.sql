-- Issue 13: the seen-set is pruned through its primary key, so the index on `seen_at` goes.
-- Forward-only: never edit once landed.
--
-- The index cost a second B-tree insert for every id a page commit records (about a third of
-- recording a 10,000-event page). Pruning now walks two ranges of each scope's keys, those with a
-- key time before the cut-off and those with one in the future, and deletes those not served since
-- (`seen_at` before the cut-off). A key's time is the vendor's time of the record, not after the
-- moment it was served unless a vendor clock ran ahead of ours: such a key, once its time is in
-- the past, is kept until that time passes the cut-off. Later, never sooner (src/store/seen.rs).
DROP INDEX IF EXISTS seen_ids_by_seen_at;
