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

/// Documents the error contract on every operation: a `default` response with the
/// standard JSON error body ([`crate::error::ErrorBody`]). Any operation may answer
/// 400, 401, 403, 413, 415, 429 or 503 with that body (docs/api/errors.md); listing
/// each on each operation by hand drifted, and the fuzz pass in `make test` checks
/// every status a server answers against its spec. Add to a service's `ApiDoc` with
/// `#[openapi(modifiers(&minicloud_proto::openapi::ErrorResponses))]`.
#[derive(Debug)]
pub struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = ResponseBuilder::new()
            .description("an error, as the standard JSON error body (docs/api/errors.md)")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| error.clone().into());
            }
        }
    }
}
