-- handoff:no-transaction
-- Every read of a family joins the screen that counts for it
-- (families.LatestScreen), ranked by when it counts from: a high risk from
-- when it was recorded, if that is later than when it was done. Ordered by
-- that expression, safety_screens_newest could not serve the ranking, and
-- each read sorted all of the family's screens; this index gives the one
-- that counts in one step. Built without holding off the services' writes.
DROP INDEX CONCURRENTLY IF EXISTS safety_screens_counts_from;
CREATE INDEX CONCURRENTLY safety_screens_counts_from ON safety_screens (clinic, family_id,
    (CASE WHEN result = 3 THEN greatest(screen_time, create_time) ELSE screen_time END) DESC, id DESC);
