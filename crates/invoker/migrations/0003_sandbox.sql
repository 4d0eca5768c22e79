-- Per-function sandbox settings (issue 15); NULL takes the invoker's defaults
-- (--invoker-scratch-mb, --invoker-network, --invoker-network-ports).
ALTER TABLE functions
    ADD COLUMN ephemeral_storage_mb integer,
    ADD COLUMN network jsonb;
