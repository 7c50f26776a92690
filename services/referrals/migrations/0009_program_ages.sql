-- The ages a program takes, 0 for no limit: a match given the person's age
-- leaves out the programs that would turn them away for it. Constant
-- defaults: adding the columns rewrites nothing, and a replica of the
-- release before this one (during a rolling deploy) writes programs
-- without limits, as they were.
ALTER TABLE programs ADD COLUMN IF NOT EXISTS min_age smallint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS max_age smallint NOT NULL DEFAULT 0;
