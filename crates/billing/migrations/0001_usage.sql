-- Usage in hourly rows: one per hour, meter, resource and owner, in the meter's
-- base unit (docs/billing.md).
CREATE TABLE usage_hourly (
    hour     timestamptz NOT NULL,
    meter    text        NOT NULL,
    resource text        NOT NULL,
    owner    text        NOT NULL,
    quantity bigint      NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (hour, meter, resource, owner)
);

-- How far each meter journal has been ingested: a batch's records at or below this
-- are skipped, in the transaction that adds the rest, so nothing is counted twice.
CREATE TABLE journals (
    journal          text        PRIMARY KEY,
    ingested_through bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
