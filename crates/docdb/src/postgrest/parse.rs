//! PostgREST's URL grammar, read into docdb's query language: `select`, filters
//! (`col=op.value`, `not.`, `or=(…)`, `and=(…)`), `order`, `limit`, `offset`.
//!
//! Hand-written: the grammar is PostgREST's own (values with parentheses, quotes
//! and commas nested in `or=(…)`), and no crate parses it. Anything this view cannot
//! answer exactly — embedding, casts, JSON arrows, full-text search, range
//! operators — is refused, never approximated.
//!
//! A row is the document's data with its id as `id`. Query-string values are text,
//! as in PostgREST, where Postgres casts them to the column's type; documents have
//! no column types, so a value matches the JSON string it spells and, when it reads
//! as one, the JSON number or boolean (`eq.5` matches `5` and `"5"`).

use minicloud_proto::error::ApiError;
use serde_json::Value;

use crate::query::{Condition, Direction, Filter, Nulls, Op, OrderBy, check_path};

/// Rows a read returns when it names no limit (Supabase's `max_rows` default).
pub(crate) const DEFAULT_LIMIT: i64 = 1000;
/// Values in one `in.(…)` list.
const MAX_LIST: usize = 50;
/// Filters in one request (each `or=(…)` member counts).
const MAX_FILTERS: usize = 100;
/// Nesting of `or(…)`/`and(…)`.
const MAX_DEPTH: usize = 8;

fn parse_error(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

/// A column of the result, possibly renamed (`alias:column`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub column: String,
}

/// What a request's query string asks for.
#[derive(Debug, Default)]
pub(crate) struct RestQuery {
    /// `None`: every column (`*`).
    pub select: Option<Vec<Column>>,
    pub filter: Option<Filter>,
    pub order: Vec<OrderBy>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// `on_conflict` of an upsert.
    pub on_conflict: Option<String>,
}

/// The docdb field a column names: `id` is the document's id, anything else a
/// top-level field of its data.
pub(crate) fn field_of(column: &str) -> Result<String, ApiError> {
    if column.contains("->") {
        return Err(parse_error(format!(
            "JSON paths ({column}) are not supported: filter and select top-level fields"
        )));
    }
    if column.contains("::") {
        return Err(parse_error(format!("casts ({column}) are not supported")));
    }
    if column == "id" {
        return Ok("$id".into());
    }
    if column.contains('.') || column.starts_with('$') {
        return Err(parse_error(format!(
            "\"{column}\" is not a column: columns are top-level field names"
        )));
    }
    check_path(column)?;
    Ok(column.to_owned())
}

pub(crate) fn parse(query: &str) -> Result<RestQuery, ApiError> {
    let mut out = RestQuery::default();
    let mut filters = Vec::new();
    let mut count = 0usize;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.contains('\0') || value.contains('\0') {
            return Err(parse_error("NUL bytes are not allowed in the query string"));
        }
        match key {
            "select" => out.select = parse_select(value)?,
            "order" => out.order = parse_order(value)?,
            "limit" => out.limit = Some(number(key, value)?),
            "offset" => out.offset = Some(number(key, value)?),
            "on_conflict" => out.on_conflict = Some(value.to_owned()),
            // What supabase-js sends with inserts: the union of the rows' keys.
            // Documents need no column list, so it is read and unused.
            "columns" => {}
            "or" | "and" | "not.or" | "not.and" => {
                let negated = key.starts_with("not.");
                let group = parse_group(key.trim_start_matches("not."), value, 0, &mut count)?;
                filters.push(if negated {
                    Filter::Not {
                        not: Box::new(group),
                    }
                } else {
                    group
                });
            }
            _ if key.contains('.') && !key.starts_with("not.") => {
                return Err(parse_error(format!(
                    "\"{key}\": filters on embedded resources are not supported"
                )));
            }
            column => {
                count += 1;
                filters.push(parse_filter(column, value)?);
            }
        }
        if count > MAX_FILTERS {
            return Err(parse_error(format!("more than {MAX_FILTERS} filters")));
        }
    }
    out.filter = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter::And { and: filters }),
    };
    Ok(out)
}

fn number(key: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| parse_error(format!("{key} must be a non-negative integer")))
}

fn parse_select(value: &str) -> Result<Option<Vec<Column>>, ApiError> {
    let mut columns = Vec::new();
    let items = split_top_level(value)?;
    for item in &items {
        let item = item.trim();
        if item.contains('(') || item.starts_with("...") || item.contains('!') {
            return Err(parse_error(format!(
                "\"{item}\": embedding resources (joins) is not supported: collections have no relations"
            )));
        }
    }
    for item in &items {
        let item = item.trim();
        if item == "*" {
            return if items.len() == 1 {
                Ok(None)
            } else {
                Err(parse_error("select * takes no other columns here"))
            };
        }
        let (name, column) = match item.split_once(':') {
            Some((alias, column)) if !column.starts_with(':') => (alias.trim(), column.trim()),
            _ => (item, item),
        };
        field_of(column)?;
        if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control() || c == '"') {
            return Err(parse_error(format!("invalid column alias {name:?}")));
        }
        columns.push(Column {
            name: name.to_owned(),
            column: column.to_owned(),
        });
    }
    if columns.is_empty() {
        return Err(parse_error("select names no column"));
    }
    Ok(Some(columns))
}

fn parse_order(value: &str) -> Result<Vec<OrderBy>, ApiError> {
    let mut order = Vec::new();
    for item in value.split(',') {
        let mut parts = item.trim().split('.');
        let column = parts.next().unwrap_or_default();
        let mut by = OrderBy {
            field: field_of(column)?,
            direction: Direction::Asc,
            nulls: None,
        };
        for modifier in parts {
            match modifier {
                "asc" => by.direction = Direction::Asc,
                "desc" => by.direction = Direction::Desc,
                "nullsfirst" => by.nulls = Some(Nulls::First),
                "nullslast" => by.nulls = Some(Nulls::Last),
                other => return Err(parse_error(format!("unknown order modifier {other:?}"))),
            }
        }
        // Postgres's default: nulls are larger than any value.
        by.nulls.get_or_insert(match by.direction {
            Direction::Asc => Nulls::Last,
            Direction::Desc => Nulls::First,
        });
        order.push(by);
    }
    if order.len() > 8 {
        return Err(parse_error("order by at most 8 columns"));
    }
    Ok(order)
}

/// `(a.eq.1,b.gt.2,and(c.is.null,d.lt.3))` as the filter tree it says.
fn parse_group(
    kind: &str,
    value: &str,
    depth: usize,
    count: &mut usize,
) -> Result<Filter, ApiError> {
    if depth > MAX_DEPTH {
        return Err(parse_error(format!(
            "or/and nested deeper than {MAX_DEPTH}"
        )));
    }
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| {
            parse_error(format!(
                "{kind} takes a parenthesised list: {kind}=(a.eq.1,b.eq.2)"
            ))
        })?;
    let mut members = Vec::new();
    for member in split_top_level(inner)? {
        let member = member.trim();
        *count += 1;
        if *count > MAX_FILTERS {
            return Err(parse_error(format!("more than {MAX_FILTERS} filters")));
        }
        let (negated, rest) = match member.strip_prefix("not.") {
            Some(rest) => (true, rest),
            None => (false, member),
        };
        let filter = if let Some(list) = rest.strip_prefix("or(") {
            parse_group("or", &format!("({list}"), depth + 1, count)?
        } else if let Some(list) = rest.strip_prefix("and(") {
            parse_group("and", &format!("({list}"), depth + 1, count)?
        } else {
            let (column, condition) = rest.split_once('.').ok_or_else(|| {
                parse_error(format!("\"{member}\" is no filter: column.op.value"))
            })?;
            parse_filter(column, condition)?
        };
        members.push(if negated {
            Filter::Not {
                not: Box::new(filter),
            }
        } else {
            filter
        });
    }
    if members.is_empty() {
        return Err(parse_error(format!("{kind}=() names no filter")));
    }
    Ok(match kind {
        "or" => Filter::Or { or: members },
        _ => Filter::And { and: members },
    })
}

/// Splits at commas outside parentheses and double quotes.
fn split_top_level(text: &str) -> Result<Vec<&str>, ApiError> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0usize, false, false, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| parse_error("unbalanced parentheses"))?;
            }
            ',' if !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(parse_error("unbalanced parentheses or quotes"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A list element or value, its quotes removed (`"a,b"` → `a,b`).
fn unquote(text: &str) -> String {
    let text = text.trim();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => text.to_owned(),
    }
}

/// The JSON values a text value matches: the string itself and, when it reads as
/// one, the number or boolean.
fn candidates(text: &str) -> Vec<Value> {
    let mut values = vec![Value::String(text.to_owned())];
    match text {
        "true" => values.push(Value::Bool(true)),
        "false" => values.push(Value::Bool(false)),
        _ => {
            if let Some(number) = number_of(text) {
                values.push(number);
            }
        }
    }
    values
}

fn number_of(text: &str) -> Option<Value> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(Value::from(n));
    }
    text.parse::<f64>()
        .ok()
        .filter(|n| {
            n.is_finite()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        })
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
}

fn condition(field: &str, op: Op, value: Value) -> Filter {
    Filter::Condition(Condition {
        field: field.to_owned(),
        op,
        value,
    })
}

/// `op.value` (optionally `not.op.value`) on `column`.
fn parse_filter(column: &str, text: &str) -> Result<Filter, ApiError> {
    let field = field_of(column)?;
    let (negated, text) = match text.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (op, value) = text.split_once('.').ok_or_else(|| {
        parse_error(format!(
            "\"{column}={text}\": a filter is op.value (eq.1, in.(1,2), is.null)"
        ))
    })?;
    let filter = match op {
        "eq" => condition(&field, Op::In, Value::Array(candidates(value))),
        // Postgres's `<>` is not true for a NULL column: neither is this.
        "neq" => Filter::And {
            and: vec![
                Filter::Not {
                    not: Box::new(condition(&field, Op::In, Value::Array(candidates(value)))),
                },
                condition(&field, Op::Exists, Value::Bool(true)),
            ],
        },
        "gt" | "gte" | "lt" | "lte" => {
            let typed = match value {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => number_of(value).unwrap_or_else(|| Value::String(value.to_owned())),
            };
            let op = match op {
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "lt" => Op::Lt,
                _ => Op::Lte,
            };
            condition(&field, op, typed)
        }
        // PostgREST takes `*` for `%`, which URLs mangle less.
        "like" => condition(&field, Op::Like, Value::String(value.replace('*', "%"))),
        "ilike" => condition(&field, Op::Ilike, Value::String(value.replace('*', "%"))),
        "in" => {
            let list = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| parse_error("in takes a parenthesised list: in.(1,2,3)"))?;
            let items = if list.trim().is_empty() {
                Vec::new()
            } else {
                split_top_level(list)?
            };
            if items.len() > MAX_LIST {
                return Err(parse_error(format!("in takes at most {MAX_LIST} values")));
            }
            let values = items
                .iter()
                .flat_map(|item| candidates(&unquote(item)))
                .collect();
            condition(&field, Op::In, Value::Array(values))
        }
        "is" => match value {
            "null" | "unknown" => condition(&field, Op::Exists, Value::Bool(false)),
            "true" => condition(&field, Op::In, Value::Array(vec![Value::Bool(true)])),
            "false" => condition(&field, Op::In, Value::Array(vec![Value::Bool(false)])),
            other => {
                return Err(parse_error(format!(
                    "is takes null, true, false or unknown, not {other:?}"
                )));
            }
        },
        "cs" => condition(&field, Op::Contains, containment(value)?),
        "fts" | "plfts" | "phfts" | "wfts" | "cd" | "ov" | "sl" | "sr" | "nxl" | "nxr" | "adj"
        | "match" | "imatch" | "isdistinct" | "all" | "any" => {
            return Err(parse_error(format!(
                "the {op} operator is not supported by minicloud's PostgREST view"
            )));
        }
        other => return Err(parse_error(format!("unknown operator {other:?}"))),
    };
    Ok(if negated {
        Filter::Not {
            not: Box::new(filter),
        }
    } else {
        filter
    })
}

/// `cs.{a,b}` (a Postgres array: the field is an array holding these strings) or
/// `cs.["a"]` / `cs.{"k":1}` (JSON containment).
fn containment(value: &str) -> Result<Value, ApiError> {
    if let Ok(json) = serde_json::from_str::<Value>(value)
        && (json.is_object() || json.is_array())
    {
        return Ok(json);
    }
    let inner = value
        .strip_prefix('{')
        .and_then(|v| v.strip_suffix('}'))
        .ok_or_else(|| parse_error("cs takes {a,b}, a JSON array or a JSON object"))?;
    let items = if inner.trim().is_empty() {
        Vec::new()
    } else {
        split_top_level(inner)?
    };
    if items.len() > MAX_LIST {
        return Err(parse_error(format!("cs takes at most {MAX_LIST} values")));
    }
    Ok(Value::Array(
        items
            .iter()
            .map(|item| Value::String(unquote(item)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter_json(query: &str) -> String {
        format!("{:?}", parse(query).unwrap().filter)
    }

    #[test]
    fn filters_read_as_docdb_conditions() {
        let q = parse(
            "select=id,task&done=is.false&priority=gte.2&order=priority.desc,id&limit=5&offset=10",
        )
        .unwrap();
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.offset, Some(10));
        assert_eq!(q.select.unwrap().len(), 2);
        assert_eq!(q.order.len(), 2);
        assert_eq!(
            q.order[0].nulls,
            Some(Nulls::First),
            "desc: nulls first, as Postgres"
        );
        assert_eq!(q.order[1].field, "$id");
        let text = filter_json("task=eq.5");
        assert!(
            text.contains("String(\"5\")") && text.contains("Number(5)"),
            "{text}"
        );
        let text = filter_json("or=(a.eq.1,and(b.gt.2,c.is.null),not.d.like.x*)");
        assert!(
            text.contains("Or") && text.contains("And") && text.contains("Not"),
            "{text}"
        );
        assert!(text.contains("x%"), "{text}");
        let text = filter_json("name=in.(\"a,b\",c)");
        assert!(text.contains("\"a,b\"") && text.contains("\"c\""), "{text}");
    }

    #[test]
    fn what_the_view_cannot_answer_exactly_is_refused() {
        for bad in [
            "select=*,owner(*)",
            "select=id,projects!inner(name)",
            "select=data->a",
            "select=id::text",
            "a=fts.cat",
            "a=ov.{1,2}",
            "a=eq",
            "a=zz.1",
            "a=in.1,2",
            "or=a.eq.1",
            "or=(a.eq.1",
            "a.b=eq.1",
            "$owner=eq.x",
            "a%3Bdrop=eq.1",
            "limit=-1",
            "limit=x",
            "order=a.sideways",
            "a=is.maybe",
            "a=eq.x%00y",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = format!("or=({}a.eq.1{})", "or(".repeat(12), ")".repeat(12));
        assert!(parse(&deep).is_err());
        let wide = (0..101)
            .map(|i| format!("f{i}=eq.1"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(parse(&wide).is_err());
    }

    #[test]
    fn containment_takes_arrays_and_json() {
        assert_eq!(containment("{a,\"b c\"}").unwrap(), json!(["a", "b c"]));
        assert_eq!(containment("[1,2]").unwrap(), json!([1, 2]));
        assert_eq!(containment("{\"k\":1}").unwrap(), json!({"k": 1}));
        assert!(containment("x").is_err());
    }
}
