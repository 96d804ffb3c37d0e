-- sentry-migrate: Sentry 6.4.4's migration 0083_migrate_dupe_groups, set-based.
--
-- Run by sentry_helper.py's `upgrade` inside South's transaction of that migration (South records
-- it as applied in the same transaction), in place of the migration's forwards(); then the helper
-- deletes the merged groups with the migration's own frozen ORM (Django's cascade), and the
-- temporary tables go at commit. Tested on real PostgreSQL by xtask/tests/dupe_groups.rs; proven
-- equal to Sentry's own migration, every table, by the rehearsal.
--
-- What 0083 does (read in the 6.4.4 egg), and how each point is kept here:
-- * It walks every group with RangeQuerySetWrapper: chunks of 1000 in id order, each next chunk
--   fetched as `id >= the last id yielded`, OFFSET 1. When that last group was merged away during
--   its chunk, the OFFSET skips the next group instead, which is then never walked: if it has
--   duplicates, a later one of them survives and it is merged into that one. The walk below is
--   that wrapper's, step for step, over the groups and which of them are gone when.
-- * A walked group that still exists, with others of the same (project, checksum) (a NULL
--   project matches NULL), survives; the others are merged into it.
-- * Survivor: times_seen, time_spent_total, time_spent_count += the others' sums; users_seen is
--   unchanged (the migration sums it under `users_seen` and adds `user_seen`, which is 0);
--   first_seen, last_seen and active_at = the greatest over the set, NULLs ignored (first_seen
--   too: not the least).
-- * Tags: per (key, value) of the others' rows, n = the sum over those rows of their GROUP's
--   times_seen (not the row's own). The survivor's row of that (key, value) and its project gets
--   times_seen += n; without one, a row is created (times_seen n; first_seen and last_seen are the
--   model's default, now). Then the others' rows are deleted.
-- * Per-minute counts: summed per date into the survivor's rows the same way (created when
--   missing), then the others' rows deleted.
-- * Events are re-pointed to the survivor. Rows created get ids in survivor order, as the
--   migration creates them survivor by survivor; within one survivor the migration follows a
--   Python dict's order (of hashes), here the key's or the date's order: the same ids, given to
--   the same rows in another order (the proof compares these tables' ids as a set).
-- * Floats (time_spent_total) are summed in a different order than Python sums them: equal for
--   the integral values Sentry 4 stores.
CREATE TEMP TABLE sentry_migrate_0083_member (
    id integer PRIMARY KEY,
    set_no integer NOT NULL,
    -- The chunk of the walk in which this group was merged away; NULL while it exists.
    gone_in integer
) ON COMMIT DROP;
CREATE INDEX ON sentry_migrate_0083_member (set_no);
CREATE TEMP TABLE sentry_migrate_0083_merge (
    survivor_id integer NOT NULL,
    other_id integer PRIMARY KEY
) ON COMMIT DROP;

INSERT INTO sentry_migrate_0083_member (id, set_no)
SELECT id, set_no FROM (
    SELECT id,
           count(*) OVER (PARTITION BY project_id, checksum) AS members,
           dense_rank() OVER (ORDER BY project_id, checksum) AS set_no
    FROM sentry_groupedmessage
) AS sets
WHERE members > 1;
ANALYZE sentry_migrate_0083_member;

DO $walk$
DECLARE
    chunk integer := 1;      -- the wrapper's chunk being iterated
    in_chunk integer := 0;   -- groups yielded from it
    skip_next boolean := false;
    last_id integer;
    gone integer;
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sentry_migrate_0083_member) THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT g.id, m.set_no
        FROM sentry_groupedmessage AS g
        LEFT JOIN sentry_migrate_0083_member AS m ON m.id = g.id
        ORDER BY g.id
    LOOP
        gone := NULL;
        IF r.set_no IS NOT NULL THEN
            SELECT m.gone_in INTO gone FROM sentry_migrate_0083_member AS m WHERE m.id = r.id;
        END IF;
        -- Merged away before this chunk was fetched: not in it.
        CONTINUE WHEN gone IS NOT NULL AND gone < chunk;
        -- The chunk's OFFSET 1 lands on this group (the one before was merged away).
        IF skip_next THEN
            skip_next := false;
            CONTINUE;
        END IF;
        in_chunk := in_chunk + 1;
        last_id := r.id;
        -- Yielded; `exists()` is false for a group merged away since the fetch.
        IF r.set_no IS NOT NULL AND gone IS NULL THEN
            INSERT INTO sentry_migrate_0083_merge (survivor_id, other_id)
            SELECT r.id, m.id FROM sentry_migrate_0083_member AS m
            WHERE m.set_no = r.set_no AND m.id <> r.id AND m.gone_in IS NULL;
            UPDATE sentry_migrate_0083_member SET gone_in = chunk
            WHERE set_no = r.set_no AND id <> r.id AND gone_in IS NULL;
        END IF;
        IF in_chunk = 1000 THEN
            -- The next chunk: `id >= last_id` OFFSET 1 skips last_id itself while it exists,
            -- else the first group after it.
            chunk := chunk + 1;
            in_chunk := 0;
            SELECT m.gone_in IS NOT NULL INTO skip_next
            FROM sentry_migrate_0083_member AS m WHERE m.id = last_id;
            skip_next := coalesce(skip_next, false);
        END IF;
    END LOOP;
END
$walk$;
ANALYZE sentry_migrate_0083_merge;

-- Events first.
UPDATE sentry_message AS e SET group_id = m.survivor_id
FROM sentry_migrate_0083_merge AS m
WHERE e.group_id = m.other_id;

-- Tags: n per (survivor, key, value) is the sum of the other GROUPS' times_seen.
CREATE TEMP TABLE sentry_migrate_0083_tag ON COMMIT DROP AS
SELECT m.survivor_id, s.project_id, t.key, t.value, sum(o.times_seen) AS times_seen
FROM sentry_migrate_0083_merge AS m
JOIN sentry_groupedmessage AS o ON o.id = m.other_id
JOIN sentry_groupedmessage AS s ON s.id = m.survivor_id
JOIN sentry_messagefiltervalue AS t ON t.group_id = m.other_id
GROUP BY m.survivor_id, s.project_id, t.key, t.value;
UPDATE sentry_messagefiltervalue AS t SET times_seen = t.times_seen + a.times_seen
FROM sentry_migrate_0083_tag AS a
WHERE t.group_id = a.survivor_id AND t.key = a.key AND t.value = a.value
  AND t.project_id IS NOT DISTINCT FROM a.project_id;
INSERT INTO sentry_messagefiltervalue (project_id, group_id, key, value, times_seen, first_seen, last_seen)
SELECT a.project_id, a.survivor_id, a.key, a.value, a.times_seen, now(), now()
FROM sentry_migrate_0083_tag AS a
WHERE NOT EXISTS (
    SELECT 1 FROM sentry_messagefiltervalue AS t
    WHERE t.group_id = a.survivor_id AND t.key = a.key AND t.value = a.value
      AND t.project_id IS NOT DISTINCT FROM a.project_id)
ORDER BY a.survivor_id, a.key, a.value;
DELETE FROM sentry_messagefiltervalue AS t
USING sentry_migrate_0083_merge AS m
WHERE t.group_id = m.other_id;

-- Per-minute counts, summed per date.
CREATE TEMP TABLE sentry_migrate_0083_count ON COMMIT DROP AS
SELECT m.survivor_id, s.project_id, c.date,
       sum(c.times_seen) AS times_seen,
       sum(c.time_spent_total) AS time_spent_total,
       sum(c.time_spent_count) AS time_spent_count
FROM sentry_migrate_0083_merge AS m
JOIN sentry_groupedmessage AS s ON s.id = m.survivor_id
JOIN sentry_messagecountbyminute AS c ON c.group_id = m.other_id
GROUP BY m.survivor_id, s.project_id, c.date;
UPDATE sentry_messagecountbyminute AS c
SET times_seen = c.times_seen + a.times_seen,
    time_spent_total = c.time_spent_total + a.time_spent_total,
    time_spent_count = c.time_spent_count + a.time_spent_count
FROM sentry_migrate_0083_count AS a
WHERE c.group_id = a.survivor_id AND c.date = a.date
  AND c.project_id IS NOT DISTINCT FROM a.project_id;
INSERT INTO sentry_messagecountbyminute (project_id, group_id, date, times_seen, time_spent_total, time_spent_count)
SELECT a.project_id, a.survivor_id, a.date, a.times_seen, a.time_spent_total, a.time_spent_count
FROM sentry_migrate_0083_count AS a
WHERE NOT EXISTS (
    SELECT 1 FROM sentry_messagecountbyminute AS c
    WHERE c.group_id = a.survivor_id AND c.date = a.date
      AND c.project_id IS NOT DISTINCT FROM a.project_id)
ORDER BY a.survivor_id, a.date;
DELETE FROM sentry_messagecountbyminute AS c
USING sentry_migrate_0083_merge AS m
WHERE c.group_id = m.other_id;

-- The survivors.
UPDATE sentry_groupedmessage AS s
SET times_seen = s.times_seen + a.times_seen,
    time_spent_total = s.time_spent_total + a.time_spent_total,
    time_spent_count = s.time_spent_count + a.time_spent_count,
    last_seen = greatest(s.last_seen, a.last_seen),
    first_seen = greatest(s.first_seen, a.first_seen),
    active_at = greatest(s.active_at, a.active_at)
FROM (
    SELECT m.survivor_id,
           sum(o.times_seen) AS times_seen,
           sum(o.time_spent_total) AS time_spent_total,
           sum(o.time_spent_count) AS time_spent_count,
           max(o.last_seen) AS last_seen,
           max(o.first_seen) AS first_seen,
           max(o.active_at) AS active_at
    FROM sentry_migrate_0083_merge AS m
    JOIN sentry_groupedmessage AS o ON o.id = m.other_id
    GROUP BY m.survivor_id
) AS a
WHERE s.id = a.survivor_id;
-- The merged groups themselves are deleted by the helper, with the migration's ORM.
