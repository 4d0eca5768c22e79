-- Stored bytes' sample time moved to `meter_samples` (created by the metering crate,
-- one row per sampler, shared with docdb and the invoker). A stored-bytes interval
-- in progress at the upgrade is not metered.
DROP TABLE stored_bytes_sample;
