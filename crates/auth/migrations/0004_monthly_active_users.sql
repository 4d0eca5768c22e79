-- The calendar month (UTC, its first day) a user last signed in or refreshed a
-- session: moving it meters the user once as a monthly active user
-- (`auth.monthly_active_users`, docs/billing.md).
ALTER TABLE users ADD COLUMN last_active_month date;
