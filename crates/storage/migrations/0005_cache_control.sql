-- The Cache-Control an object is served with (Supabase's `cacheControl` upload
-- option, or the upload's own Cache-Control header); NULL serves `no-cache`.
ALTER TABLE objects ADD COLUMN cache_control text;
