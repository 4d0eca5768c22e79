-- Issue 21: at most this many instances of the function; calls beyond wait in its
-- queue instead of being throttled. NULL: Lambda's behaviour (an instance per
-- concurrent call, up to the concurrency limit).
ALTER TABLE functions ADD COLUMN max_instances integer;
