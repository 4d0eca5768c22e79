-- The role a subscription's owner subscribed with: every delivery re-checks the
-- owner's rights (read the topic, invoke the target function, publish to the target
-- or dead-letter topic) against that role's current policies. Subscriptions made
-- before this column existed without an owner were made by minicloud's services
-- (triggers, async invocations) or the service key; those with one by signed-in users.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS owner_role text;
UPDATE subscriptions SET owner_role = CASE WHEN owner IS NULL THEN 'service' ELSE 'authenticated' END
WHERE owner_role IS NULL;
ALTER TABLE subscriptions ALTER COLUMN owner_role SET NOT NULL;

-- The Standard Webhooks signing secret of a webhook subscription (`whsec_…`),
-- returned once at creation. Webhook subscriptions made before it existed stay
-- unsigned: their owners never saw a secret to verify with.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS webhook_secret text;
