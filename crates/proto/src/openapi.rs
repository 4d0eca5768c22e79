//! Keeping the committed OpenAPI specs (`docs/api/openapi/*.json`) true to the code.

/// Asserts that `path` holds exactly `generated` (pretty JSON); with `UPDATE_OPENAPI`
/// set, rewrites it first. Each service's unit tests call this for its spec.
pub fn check_committed_spec(generated: &str, path: &str) {
    let generated = format!("{generated}\n");
    if std::env::var_os("UPDATE_OPENAPI").is_some()
        && let Err(error) = std::fs::write(path, &generated)
    {
        panic!("writing {path}: {error}");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is stale: run UPDATE_OPENAPI=1 cargo nextest run --workspace openapi"
    );
}
