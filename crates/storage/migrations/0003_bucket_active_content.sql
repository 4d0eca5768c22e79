-- Objects whose type a browser runs (HTML, SVG, XML, JavaScript) are served as
-- attachments unless their bucket opts in to serving them inline (issue 16): an
-- uploaded page would otherwise run with the gateway's origin.
ALTER TABLE buckets ADD COLUMN IF NOT EXISTS inline_active_content boolean NOT NULL DEFAULT false;
