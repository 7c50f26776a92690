-- Who made a hold, and whether a workflow did (the worker, not a person):
-- a workflow gives back only the places it held itself. Holds made before
-- this are taken as a workflow's, which gave back every live treatment
-- hold of its intervention, as it did when they were made.
ALTER TABLE holds ADD COLUMN holder text NOT NULL DEFAULT '';
ALTER TABLE holds ADD COLUMN workflow_held boolean NOT NULL DEFAULT true;
