-- Who sent each request id, kept apart from the request hash: the same
-- caller sending an id again with another request is told what the first
-- request made (a retry whose body changed, such as a workflow step that
-- read newer data); another caller is told nothing of it. Keys stored
-- before this have no caller and tell no one.
ALTER TABLE idempotency_keys ADD COLUMN caller text;
