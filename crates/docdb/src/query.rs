//! The query language: a filter tree over dotted JSON paths, order, limit and a
//! keyset cursor, compiled to SQL in which every value is a bind parameter and every
//! path is checked against a grammar before it is spliced in.
//!
//! Paths address the document's `data` (`a.b.c`); `$id`, `$owner`, `$version`,
//! `$created_at` and `$updated_at` address its metadata. A missing path compares as
//! JSON `null`, so every document has a place in every order.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minicloud_proto::error::ApiError;
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Postgres};

pub const MAX_LIMIT: i64 = 1000;
const MAX_NODES: usize = 100;
const MAX_DEPTH: usize = 16;
const MAX_IN: usize = 100;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Filter {
    And {
        #[schema(no_recursion)]
        and: Vec<Filter>,
    },
    Or {
        #[schema(no_recursion)]
        or: Vec<Filter>,
    },
    Not {
        #[schema(no_recursion)]
        not: Box<Filter>,
    },
    Condition(Condition),
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Contains,
    Exists,
    Prefix,
    /// SQL `LIKE` on strings (`%` any run, `_` one character).
    Like,
    /// Case-insensitive `LIKE`.
    Ilike,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// Where documents without the field (JSON `null`) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Nulls {
    First,
    Last,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub field: String,
    #[serde(default)]
    pub direction: Direction,
    /// Unset: JSON order, where `null` sorts lowest (first ascending, last
    /// descending).
    #[serde(default)]
    pub nulls: Option<Nulls>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryIn {
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub cursor: Option<String>,
    /// Documents to skip (0 to 100,000); not with `cursor`.
    #[serde(default)]
    pub offset: Option<i64>,
    #[serde(default)]
    pub count: bool,
}

pub const MAX_OFFSET: i64 = 100_000;

/// `a.b_c.d`: 1–8 segments of `[A-Za-z_][A-Za-z0-9_]{0,62}`, or a `$` metadata name.
pub fn check_path(field: &str) -> Result<(), ApiError> {
    if META.iter().any(|(name, _)| *name == field) {
        return Ok(());
    }
    let segments: Vec<&str> = field.split('.').collect();
    let valid = !field.is_empty()
        && segments.len() <= 8
        && segments.iter().all(|s| {
            let bytes = s.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid field path {field:?}: dotted names of letters, digits and _ (or $id, $owner, $version, $created_at, $updated_at)"
        )))
    }
}

const META: [(&str, &str); 5] = [
    ("$id", "to_jsonb(id)"),
    ("$owner", "COALESCE(to_jsonb(owner), 'null'::jsonb)"),
    ("$version", "to_jsonb(version)"),
    ("$created_at", "to_jsonb(created_at)"),
    ("$updated_at", "to_jsonb(updated_at)"),
];

/// The SQL expression of a checked path: a jsonb value, `null` when missing. Index
/// definitions use the same text, so queries on indexed paths can use the index.
pub fn expression(field: &str) -> String {
    if let Some((_, sql)) = META.iter().find(|(name, _)| *name == field) {
        return (*sql).to_owned();
    }
    format!(
        "COALESCE(data #> '{{{}}}', 'null'::jsonb)",
        field.replace('.', ",")
    )
}

/// The bind values of a statement under construction.
#[derive(Debug, Default)]
pub struct Sql {
    pub args: PgArguments,
    count: usize,
}

impl Sql {
    pub fn new() -> Sql {
        Sql::default()
    }

    /// Appends a bind parameter, returning its placeholder.
    pub fn bind<T>(&mut self, value: T) -> Result<String, ApiError>
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.args
            .add(value)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.count += 1;
        Ok(format!("${}", self.count))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn compile_filter(
    filter: &Filter,
    sql: &mut Sql,
    depth: usize,
    nodes: &mut usize,
) -> Result<String, ApiError> {
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES {
        return Err(ApiError::invalid(format!(
            "filter deeper than {MAX_DEPTH} or larger than {MAX_NODES} nodes"
        )));
    }
    Ok(match filter {
        Filter::And { and } | Filter::Or { or: and } if and.is_empty() => {
            return Err(ApiError::invalid("and/or need at least one condition"));
        }
        Filter::And { and } => {
            let parts = and
                .iter()
                .map(|f| compile_filter(f, sql, depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            format!("({})", parts.join(" AND "))
        }
        Filter::Or { or } => {
            let parts = or
                .iter()
                .map(|f| compile_filter(f, sql, depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            format!("({})", parts.join(" OR "))
        }
        Filter::Not { not } => format!("(NOT {})", compile_filter(not, sql, depth + 1, nodes)?),
        Filter::Condition(condition) => compile_condition(condition, sql)?,
    })
}

/// `$id = v` or `$id IN (…)` with string values, as a comparison of the id column
/// itself, so the primary key's index answers it.
fn id_lookup(condition: &Condition, sql: &mut Sql) -> Result<Option<String>, ApiError> {
    if condition.field != "$id" {
        return Ok(None);
    }
    let ids: Vec<String> = match (&condition.op, &condition.value) {
        (Op::Eq, Value::String(id)) => vec![id.clone()],
        (Op::In, Value::Array(values)) if values.len() <= MAX_IN => {
            // Ids are strings: other values match nothing.
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }
        _ => return Ok(None),
    };
    // One id as a plain equality: Postgres plans `= ANY($1)` anew for each call
    // where `= $1` keeps its generic plan (measured: 80 µs of a by-id select).
    Ok(Some(match <[String; 1]>::try_from(ids) {
        Ok([id]) => format!("id = {}", sql.bind(id)?),
        Err(ids) => format!("id = ANY({})", sql.bind(ids)?),
    }))
}

fn compile_condition(condition: &Condition, sql: &mut Sql) -> Result<String, ApiError> {
    check_path(&condition.field)?;
    if let Some(lookup) = id_lookup(condition, sql)? {
        return Ok(lookup);
    }
    let expr = expression(&condition.field);
    let value = &condition.value;
    Ok(match condition.op {
        Op::Eq => format!("{expr} = {}", sql.bind(value.clone())?),
        Op::Ne => format!("{expr} <> {}", sql.bind(value.clone())?),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            if !matches!(value, Value::Number(_) | Value::String(_) | Value::Bool(_)) {
                return Err(ApiError::invalid(
                    "gt/gte/lt/lte compare numbers, strings or booleans",
                ));
            }
            let op = match condition.op {
                Op::Gt => ">",
                Op::Gte => ">=",
                Op::Lt => "<",
                _ => "<=",
            };
            // JSON orders by type first: keep to the value's type, so numbers compare
            // as numbers and strings as strings, never across.
            let placeholder = sql.bind(value.clone())?;
            format!(
                "({expr} {op} {placeholder} AND jsonb_typeof({expr}) = '{}')",
                json_type(value)
            )
        }
        Op::In => {
            let Value::Array(values) = value else {
                return Err(ApiError::invalid("in takes an array"));
            };
            if values.len() > MAX_IN {
                return Err(ApiError::invalid(format!(
                    "in takes at most {MAX_IN} values"
                )));
            }
            format!("{expr} = ANY({})", sql.bind(values.clone())?)
        }
        Op::Contains => {
            // An array contains a scalar; an object or array contains a sub-document.
            let needle = match value {
                Value::Array(_) | Value::Object(_) => value.clone(),
                scalar => Value::Array(vec![scalar.clone()]),
            };
            format!("{expr} @> {}", sql.bind(needle)?)
        }
        Op::Exists => {
            let wanted = match value {
                Value::Bool(b) => *b,
                Value::Null => true,
                _ => return Err(ApiError::invalid("exists takes true or false")),
            };
            let present = format!("{expr} <> 'null'::jsonb");
            if wanted {
                present
            } else {
                format!("NOT ({present})")
            }
        }
        Op::Prefix => {
            let Value::String(prefix) = value else {
                return Err(ApiError::invalid("prefix takes a string"));
            };
            format!(
                "(jsonb_typeof({expr}) = 'string' AND starts_with({expr} #>> '{{}}', {}))",
                sql.bind(prefix.clone())?
            )
        }
        Op::Like | Op::Ilike => {
            let Value::String(pattern) = value else {
                return Err(ApiError::invalid("like and ilike take a string pattern"));
            };
            if pattern.len() > 1024 {
                return Err(ApiError::invalid("a like pattern is at most 1024 bytes"));
            }
            let op = if condition.op == Op::Like {
                "LIKE"
            } else {
                "ILIKE"
            };
            format!(
                "(jsonb_typeof({expr}) = 'string' AND ({expr} #>> '{{}}') {op} {})",
                sql.bind(pattern.clone())?
            )
        }
    })
}

/// A compiled query: WHERE (filter and cursor), ORDER BY, LIMIT, OFFSET.
#[derive(Debug)]
pub struct Compiled {
    pub sql: Sql,
    pub filter_where: String,
    pub order: Vec<(String, Direction)>,
    pub limit: i64,
    pub offset: i64,
    /// The filter names one id: at most one document matches, so nothing needs
    /// sorting (a by-id select, as `single()` sends it).
    pub at_most_one: bool,
}

/// The sort key of a row, carried in the cursor.
pub fn order_key_select(order: &[(String, Direction)]) -> String {
    let parts: Vec<String> = order.iter().map(|(expr, _)| expr.clone()).collect();
    format!("jsonb_build_array({})", parts.join(", "))
}

pub fn compile(query: &QueryIn) -> Result<Compiled, ApiError> {
    let limit = match query.limit {
        None => 100,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid(format!("limit must be 1 to {MAX_LIMIT}"))),
    };
    if query.order_by.len() > 8 {
        return Err(ApiError::invalid("at most 8 order_by fields"));
    }
    let offset = match query.offset {
        None => 0,
        Some(_) if query.cursor.is_some() => {
            return Err(ApiError::invalid("offset and cursor exclude each other"));
        }
        Some(n) if (0..=MAX_OFFSET).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "offset must be 0 to {MAX_OFFSET}"
            )));
        }
    };
    let mut sql = Sql::new();
    let mut nodes = 0;
    let filter_where = match &query.filter {
        Some(filter) => compile_filter(filter, &mut sql, 0, &mut nodes)?,
        None => "TRUE".to_owned(),
    };
    let mut order = Vec::new();
    for by in &query.order_by {
        check_path(&by.field)?;
        let expr = expression(&by.field);
        // Nulls placed explicitly: a key of whether the field is null, before it
        // (false < true, so ascending puts nulls last).
        if let Some(nulls) = by.nulls {
            let direction = match nulls {
                Nulls::Last => Direction::Asc,
                Nulls::First => Direction::Desc,
            };
            order.push((format!("to_jsonb({expr} = 'null'::jsonb)"), direction));
        }
        order.push((expr, by.direction));
    }
    // The id breaks ties, so the order is total and the cursor exact.
    if !query.order_by.iter().any(|by| by.field == "$id") {
        order.push((expression("$id"), Direction::Asc));
    }
    let at_most_one = matches!(
        &query.filter,
        Some(Filter::Condition(Condition { field, op: Op::Eq, value: Value::String(_) })) if field == "$id"
    ) || matches!(
        &query.filter,
        Some(Filter::Condition(Condition { field, op: Op::In, value: Value::Array(values) }))
            if field == "$id" && values.iter().filter(|v| v.is_string()).count() <= 1
    );
    Ok(Compiled {
        sql,
        filter_where,
        order,
        limit,
        offset,
        at_most_one,
    })
}

impl Compiled {
    /// `(a, b, id) > cursor` for any mix of directions, as an OR of prefixes.
    pub fn cursor_where(&mut self, cursor: &str) -> Result<String, ApiError> {
        let values: Vec<Value> = URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|values: &Vec<Value>| values.len() == self.order.len())
            .ok_or_else(|| ApiError::invalid("invalid cursor"))?;
        let mut placeholders = Vec::new();
        for value in values {
            placeholders.push(self.sql.bind(value)?);
        }
        let mut alternatives = Vec::new();
        for i in 0..self.order.len() {
            let mut terms = Vec::new();
            for ((expr, _), placeholder) in self.order.iter().zip(&placeholders).take(i) {
                terms.push(format!("{expr} = {placeholder}"));
            }
            let op = if self.order[i].1 == Direction::Asc {
                ">"
            } else {
                "<"
            };
            terms.push(format!("{} {op} {}", self.order[i].0, placeholders[i]));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        Ok(format!("({})", alternatives.join(" OR ")))
    }

    pub fn order_by_sql(&self) -> String {
        self.order
            .iter()
            .map(|(expr, direction)| {
                format!(
                    "{expr} {}",
                    if *direction == Direction::Asc {
                        "ASC"
                    } else {
                        "DESC"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn encode_cursor(key: &Value) -> String {
    URL_SAFE_NO_PAD.encode(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a'b",
            "a;drop table x",
            "a}b",
            "a,b",
            "1a",
            "a b",
            "$nope",
            "a.b.c.d.e.f.g.h.i",
            "é",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for ok in ["a", "a.b_c.d", "_x", "$id", "$created_at", "A1"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn values_never_reach_the_sql_text() {
        let query: QueryIn = serde_json::from_value(json!({
            "filter": {"and": [
                {"field": "name", "op": "eq", "value": "x'); DROP TABLE kv; --"},
                {"or": [{"field": "size", "op": "gt", "value": 100}, {"not": {"field": "tags", "op": "contains", "value": "a'b"}}]},
                {"field": "title", "op": "prefix", "value": "%_'"}
            ]},
            "order_by": [{"field": "size", "direction": "desc"}]
        }))
        .unwrap();
        let compiled = compile(&query).unwrap();
        let text = format!(
            "{} ORDER BY {}",
            compiled.filter_where,
            compiled.order_by_sql()
        );
        assert!(
            !text.contains("DROP") && !text.contains("a'b") && !text.contains("%_"),
            "{text}"
        );
        assert!(text.contains("$1") && text.contains("$4"));
    }

    #[test]
    fn bad_queries_are_refused() {
        for bad in [
            json!({"filter": {"field": "a", "op": "like", "value": 1}}),
            json!({"filter": {"field": "a", "op": "gt", "value": [1]}}),
            json!({"filter": {"field": "a", "op": "in", "value": 1}}),
            json!({"filter": {"and": []}}),
            json!({"limit": 0}),
            json!({"limit": 1001}),
            json!({"order_by": [{"field": "a'"}]}),
        ] {
            let parsed: Result<QueryIn, _> = serde_json::from_value(bad.clone());
            if let Ok(query) = parsed {
                assert!(compile(&query).is_err(), "{bad}");
            }
        }
        let mut deep = json!({"field": "a", "op": "eq", "value": 1});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        let query: QueryIn = serde_json::from_value(json!({ "filter": deep })).unwrap();
        assert!(compile(&query).is_err());
    }

    proptest! {
        #[test]
        fn path_checking_never_panics_and_accepted_paths_are_sql_safe(field in ".{0,40}") {
            if check_path(&field).is_ok() {
                let expr = expression(&field);
                let safe = !field.contains('\'') && !field.contains('}') && !field.contains(',');
                prop_assert!(safe, "accepted an unsafe path {:?}", field);
                prop_assert!(expr.starts_with("COALESCE(") || expr.starts_with("to_jsonb("));
            }
        }
    }
}
