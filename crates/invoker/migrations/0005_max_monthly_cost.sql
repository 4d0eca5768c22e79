-- A function's monthly cost cap in USD (decimal text); billing keeps the budget that
-- enforces it (docs/billing.md).
ALTER TABLE functions ADD COLUMN max_monthly_cost text;
