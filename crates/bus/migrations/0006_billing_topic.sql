-- Budget alerts (the billing service's outbox publishes them here).
INSERT INTO topics (name, builtin) VALUES ('billing', true) ON CONFLICT (name) DO NOTHING;
