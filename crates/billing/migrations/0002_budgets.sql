-- Budgets (docs/billing.md). Amounts are decimal text (rust_decimal), as the API
-- writes them.
CREATE TABLE budgets (
    name       text        PRIMARY KEY,
    amount     text        NOT NULL,
    scope      jsonb       NOT NULL,
    thresholds integer[]   NOT NULL,
    basis      text        NOT NULL,
    actions    text[]      NOT NULL,
    -- Bumped by every change: a changed budget's thresholds fire again and its cap
    -- is judged anew.
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A threshold fired: once per budget version, period and threshold, whichever
-- replica or restart evaluates it (its event goes out through the outbox in the
-- same transaction).
CREATE TABLE budget_alerts (
    budget       text        NOT NULL REFERENCES budgets (name) ON DELETE CASCADE,
    version      bigint      NOT NULL,
    period_start timestamptz NOT NULL,
    threshold    integer     NOT NULL,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, version, period_start, threshold)
);

-- The last evaluation of each budget: what the services' cap checks read.
CREATE TABLE budget_state (
    budget       text        PRIMARY KEY REFERENCES budgets (name) ON DELETE CASCADE,
    version      bigint      NOT NULL,
    period_start timestamptz NOT NULL,
    actual       text        NOT NULL,
    forecast     text        NOT NULL,
    capped       boolean     NOT NULL,
    evaluated_at timestamptz NOT NULL
);
