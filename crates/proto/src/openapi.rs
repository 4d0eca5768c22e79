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
    let misplaced = misplaced_parameters(&generated);
    assert!(
        misplaced.is_empty(),
        "{path}: parameters in the wrong place (a query parameter declared `in: path`, \
         or a path template without its parameter; `#[into_params(parameter_in = Query)]` \
         on query structs): {misplaced:?}"
    );
}

/// [`check_committed_spec`] for a service's document `D`, committed as
/// `docs/api/openapi/{name}.json`.
pub fn check_committed_spec_of<D: utoipa::OpenApi>(name: &str) {
    let generated = serde_json::to_string_pretty(&D::openapi()).expect("a spec serialises");
    let path = format!(
        "{}/../../docs/api/openapi/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    check_committed_spec(&generated, &path);
}

/// `method path: name` of every operation parameter declared `in: path` that its
/// path does not have, and of every `{name}` in a path that is not declared: clients
/// generated from such a spec put query parameters into the URL path.
pub fn misplaced_parameters(spec: &str) -> Vec<String> {
    let Ok(spec) = serde_json::from_str::<serde_json::Value>(spec) else {
        return vec!["the spec is not JSON".to_owned()];
    };
    let mut out = Vec::new();
    let Some(paths) = spec["paths"].as_object() else {
        return out;
    };
    for (path, operations) in paths {
        let templated: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .collect();
        for (method, operation) in operations.as_object().into_iter().flatten() {
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for name in declared.iter().filter(|n| !templated.contains(n)) {
                out.push(format!("{method} {path}: {name} is not in the path"));
            }
            for name in templated.iter().filter(|n| !declared.contains(n)) {
                out.push(format!("{method} {path}: {{{name}}} is not declared"));
            }
        }
    }
    out
}

/// Documents the error contract on every operation: a `default` response with the
/// standard JSON error body ([`crate::error::ErrorBody`]). Any operation may answer
/// 400, 401, 403, 413, 415, 429 or 503 with that body (docs/api/errors.md); listing
/// each on each operation by hand drifted, and the fuzz pass in `make test` checks
/// every status a server answers against its spec. Add to a service's `ApiDoc` with
/// `#[openapi(modifiers(&minicloud_proto::openapi::ErrorResponses))]`; it adds the
/// `ErrorBody` schema too.
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
        // The body those responses name, with whatever it refers to.
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(
            "ErrorBody".to_owned(),
            <crate::error::ErrorBody as utoipa::PartialSchema>::schema(),
        );
        let mut referred = Vec::new();
        <crate::error::ErrorBody as utoipa::ToSchema>::schemas(&mut referred);
        components.schemas.extend(referred);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_parameters_declared_in_the_path_are_found() {
        let spec = serde_json::json!({"paths": {
            "/v1/items/{id}": {"get": {"parameters": [
                {"name": "id", "in": "path"},
                {"name": "limit", "in": "path"},
                {"name": "cursor", "in": "query"}
            ]}},
            "/v1/things/{name}": {"delete": {"parameters": []}}
        }})
        .to_string();
        assert_eq!(
            super::misplaced_parameters(&spec),
            [
                "get /v1/items/{id}: limit is not in the path",
                "delete /v1/things/{name}: {name} is not declared"
            ]
        );
    }
}
