-- Async function invocations travel on `functions`; those that fail every retry land
-- on `functions.dead-letter`.
INSERT INTO topics (name, builtin) VALUES ('functions', true), ('functions.dead-letter', true)
ON CONFLICT (name) DO NOTHING;
