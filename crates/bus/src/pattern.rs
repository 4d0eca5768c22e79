//! EventBridge-style event patterns, matched against structured CloudEvents (the
//! event JSON: `type`, `source`, `subject`, `data.…`).
//!
//! A pattern is a JSON object whose keys name event fields; nested objects match
//! nested fields; every key must match (and). A leaf is an array of matchers, any
//! of which may match (or): literals, `{"prefix"}`, `{"suffix"}`,
//! `{"equals-ignore-case"}`, `{"wildcard"}`, `{"anything-but"}` (a value, a list, or
//! a prefix/suffix), `{"numeric":[">",0,"<=",5]}` and `{"exists":bool}`. `"$or"` takes
//! a list of patterns at any level. When the event field is an array, the leaf
//! matches if any element does.
//!
//! Subscriptions (issue 6) hold one of these; it is parsed and checked once, when the
//! subscription is created, so a bad pattern is a 400 there, not a silent no-match.

use serde_json::{Map, Value};

const MAX_DEPTH: usize = 8;
const MAX_MATCHERS: usize = 300;

#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    fields: Vec<(String, Node)>,
    or: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Nested(Pattern),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Exact(Value),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(String),
    Wildcard(String),
    AnythingBut(Vec<Value>),
    AnythingButPrefix(String),
    AnythingButSuffix(String),
    Numeric(Vec<(Comparison, f64)>),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Lt,
    Lte,
    Eq,
    Gte,
    Gt,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event pattern: {0}")]
pub struct PatternError(pub String);

fn error(message: impl Into<String>) -> PatternError {
    PatternError(message.into())
}

impl Pattern {
    pub fn parse(value: &Value) -> Result<Pattern, PatternError> {
        let mut budget = MAX_MATCHERS;
        match value {
            Value::Null => Ok(Pattern {
                fields: Vec::new(),
                or: Vec::new(),
            }),
            Value::Object(map) => parse_object(map, 0, &mut budget),
            _ => Err(error("a pattern is a JSON object")),
        }
    }

    /// Whether `event` (the structured CloudEvent JSON) matches.
    pub fn matches(&self, event: &Value) -> bool {
        let fields_match = self.fields.iter().all(|(name, node)| {
            let field = event.get(name);
            match node {
                Node::Nested(pattern) => match field {
                    Some(inner @ Value::Object(_)) => pattern.matches(inner),
                    _ => pattern.fields.iter().all(
                        |(_, n)| matches!(n, Node::Leaf(m) if m.contains(&Matcher::Exists(false))),
                    ),
                },
                Node::Leaf(matchers) => leaf_matches(matchers, field),
            }
        });
        fields_match && (self.or.is_empty() || self.or.iter().any(|p| p.matches(event)))
    }
}

fn parse_object(
    map: &Map<String, Value>,
    depth: usize,
    budget: &mut usize,
) -> Result<Pattern, PatternError> {
    if depth > MAX_DEPTH {
        return Err(error(format!("nested deeper than {MAX_DEPTH}")));
    }
    let mut fields = Vec::new();
    let mut or = Vec::new();
    for (key, value) in map {
        if key == "$or" {
            let Value::Array(alternatives) = value else {
                return Err(error("$or takes a list of patterns"));
            };
            if alternatives.is_empty() {
                return Err(error("$or needs at least one pattern"));
            }
            for alternative in alternatives {
                let Value::Object(inner) = alternative else {
                    return Err(error("$or takes a list of patterns"));
                };
                or.push(parse_object(inner, depth + 1, budget)?);
            }
            continue;
        }
        if key.is_empty() || key.len() > 256 {
            return Err(error("field names are 1 to 256 bytes"));
        }
        let node = match value {
            Value::Object(inner) => Node::Nested(parse_object(inner, depth + 1, budget)?),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(error(format!("{key}: a list of matchers may not be empty")));
                }
                let mut matchers = Vec::with_capacity(items.len());
                for item in items {
                    *budget = budget
                        .checked_sub(1)
                        .ok_or_else(|| error(format!("more than {MAX_MATCHERS} matchers")))?;
                    matchers.push(parse_matcher(key, item)?);
                }
                Node::Leaf(matchers)
            }
            _ => {
                return Err(error(format!(
                    "{key}: expected a list of matchers or a nested pattern"
                )));
            }
        };
        fields.push((key.clone(), node));
    }
    Ok(Pattern { fields, or })
}

fn string_of(key: &str, op: &str, value: &Value) -> Result<String, PatternError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| error(format!("{key}: {op} takes a string")))
}

fn parse_matcher(key: &str, item: &Value) -> Result<Matcher, PatternError> {
    let Value::Object(operator) = item else {
        return Ok(Matcher::Exact(item.clone()));
    };
    if operator.len() != 1 {
        return Err(error(format!(
            "{key}: a matcher object has exactly one operator"
        )));
    }
    let (op, argument) = operator
        .iter()
        .next()
        .ok_or_else(|| error("empty matcher"))?;
    Ok(match op.as_str() {
        "prefix" => Matcher::Prefix(string_of(key, op, argument)?),
        "suffix" => Matcher::Suffix(string_of(key, op, argument)?),
        "equals-ignore-case" => {
            Matcher::EqualsIgnoreCase(string_of(key, op, argument)?.to_lowercase())
        }
        "wildcard" => Matcher::Wildcard(string_of(key, op, argument)?),
        "exists" => Matcher::Exists(
            argument
                .as_bool()
                .ok_or_else(|| error(format!("{key}: exists takes true or false")))?,
        ),
        "anything-but" => match argument {
            Value::Array(values) if values.iter().all(|v| !v.is_object() && !v.is_array()) => {
                Matcher::AnythingBut(values.clone())
            }
            Value::Object(inner) if inner.len() == 1 => match inner.iter().next() {
                Some((k, v)) if k == "prefix" => {
                    Matcher::AnythingButPrefix(string_of(key, "anything-but prefix", v)?)
                }
                Some((k, v)) if k == "suffix" => {
                    Matcher::AnythingButSuffix(string_of(key, "anything-but suffix", v)?)
                }
                _ => {
                    return Err(error(format!(
                        "{key}: anything-but takes a value, a list, or prefix/suffix"
                    )));
                }
            },
            Value::Array(_) | Value::Object(_) => {
                return Err(error(format!(
                    "{key}: anything-but takes a value, a list, or prefix/suffix"
                )));
            }
            scalar => Matcher::AnythingBut(vec![scalar.clone()]),
        },
        "numeric" => {
            let Value::Array(parts) = argument else {
                return Err(error(format!("{key}: numeric takes [op, number, …]")));
            };
            if parts.is_empty() || parts.len() % 2 != 0 || parts.len() > 4 {
                return Err(error(format!(
                    "{key}: numeric takes one or two [op, number] pairs"
                )));
            }
            let mut comparisons = Vec::new();
            for pair in parts.chunks(2) {
                let comparison = match pair[0].as_str() {
                    Some("<") => Comparison::Lt,
                    Some("<=") => Comparison::Lte,
                    Some("=") => Comparison::Eq,
                    Some(">=") => Comparison::Gte,
                    Some(">") => Comparison::Gt,
                    _ => return Err(error(format!("{key}: numeric operators are < <= = >= >"))),
                };
                let number = pair[1]
                    .as_f64()
                    .ok_or_else(|| error(format!("{key}: numeric compares with numbers")))?;
                comparisons.push((comparison, number));
            }
            Matcher::Numeric(comparisons)
        }
        other => return Err(error(format!("{key}: unknown matcher {other:?}"))),
    })
}

/// `*` matches any run of characters; everything else is literal.
fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

fn scalar_matches(matcher: &Matcher, value: &Value) -> bool {
    match matcher {
        Matcher::Exact(expected) => match (expected, value) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => expected == value,
        },
        Matcher::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        Matcher::Suffix(p) => value.as_str().is_some_and(|s| s.ends_with(p.as_str())),
        Matcher::EqualsIgnoreCase(p) => value.as_str().is_some_and(|s| s.to_lowercase() == *p),
        Matcher::Wildcard(p) => value.as_str().is_some_and(|s| wildcard(p, s)),
        Matcher::AnythingBut(values) => !values
            .iter()
            .any(|v| scalar_matches(&Matcher::Exact(v.clone()), value)),
        Matcher::AnythingButPrefix(p) => value.as_str().is_some_and(|s| !s.starts_with(p.as_str())),
        Matcher::AnythingButSuffix(p) => value.as_str().is_some_and(|s| !s.ends_with(p.as_str())),
        Matcher::Numeric(comparisons) => value.as_f64().is_some_and(|n| {
            comparisons.iter().all(|(op, bound)| match op {
                Comparison::Lt => n < *bound,
                Comparison::Lte => n <= *bound,
                Comparison::Eq => n == *bound,
                Comparison::Gte => n >= *bound,
                Comparison::Gt => n > *bound,
            })
        }),
        Matcher::Exists(_) => true,
    }
}

fn leaf_matches(matchers: &[Matcher], field: Option<&Value>) -> bool {
    matchers.iter().any(|matcher| match (matcher, field) {
        (Matcher::Exists(wanted), field) => field.is_some() == *wanted,
        (_, None) => false,
        (matcher, Some(Value::Array(items))) => {
            items.iter().any(|item| scalar_matches(matcher, item))
        }
        (matcher, Some(value)) => scalar_matches(matcher, value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "specversion": "1.0", "id": "e1", "source": "/minicloud/storage",
            "type": "minicloud.storage.object.created", "subject": "photos/u1/cat.jpg",
            "data": {"bucket": "photos", "path": "u1/cat.jpg", "size": 2048, "content_type": "image/jpeg",
                     "tags": ["pets", "cats"], "owner": null}
        })
    }

    fn check(pattern: Value) -> bool {
        Pattern::parse(&pattern).unwrap().matches(&event())
    }

    #[test]
    fn table_of_matches() {
        let cases = [
            (json!({}), true),
            (json!({"type": ["minicloud.storage.object.created"]}), true),
            (json!({"type": ["minicloud.storage.object.deleted"]}), false),
            (
                json!({"type": [{"prefix": "minicloud.storage."}], "data": {"bucket": ["photos"]}}),
                true,
            ),
            (json!({"data": {"bucket": ["thumbnails"]}}), false),
            (json!({"subject": [{"suffix": ".jpg"}]}), true),
            (
                json!({"subject": [{"suffix": ".png"}, {"suffix": ".jpg"}]}),
                true,
            ),
            (
                json!({"data": {"size": [{"numeric": [">", 1024, "<=", 4096]}]}}),
                true,
            ),
            (json!({"data": {"size": [{"numeric": [">", 4096]}]}}), false),
            (json!({"data": {"size": [2048.0]}}), true),
            (
                json!({"data": {"bucket": [{"anything-but": "thumbnails"}]}}),
                true,
            ),
            (
                json!({"data": {"bucket": [{"anything-but": ["photos", "x"]}]}}),
                false,
            ),
            (
                json!({"data": {"path": [{"anything-but": {"prefix": "u2/"}}]}}),
                true,
            ),
            (json!({"data": {"missing": [{"exists": false}]}}), true),
            (json!({"data": {"missing": [{"exists": true}]}}), false),
            (json!({"data": {"bucket": [{"exists": true}]}}), true),
            (json!({"data": {"owner": [null]}}), true),
            (json!({"data": {"tags": ["cats"]}}), true),
            (json!({"data": {"tags": ["dogs"]}}), false),
            (
                json!({"data": {"content_type": [{"equals-ignore-case": "IMAGE/JPEG"}]}}),
                true,
            ),
            (json!({"subject": [{"wildcard": "photos/*/*.jpg"}]}), true),
            (json!({"subject": [{"wildcard": "thumbs/*"}]}), false),
            (
                json!({"$or": [{"type": ["nope"]}, {"data": {"bucket": ["photos"]}}]}),
                true,
            ),
            (
                json!({"$or": [{"type": ["nope"]}, {"data": {"bucket": ["nah"]}}]}),
                false,
            ),
            (
                json!({"source": ["/minicloud/storage"], "$or": [{"data": {"size": [{"numeric": ["<", 10]}]}}, {"subject": [{"prefix": "photos/"}]}]}),
                true,
            ),
            (json!({"nothere": {"deeper": ["x"]}}), false),
        ];
        for (pattern, expected) in cases {
            assert_eq!(check(pattern.clone()), expected, "{pattern}");
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            json!("type"),
            json!({"type": "exact string, not a list"}),
            json!({"type": []}),
            json!({"type": [{"prefix": 1}]}),
            json!({"type": [{"regex": ".*"}]}),
            json!({"type": [{"prefix": "a", "suffix": "b"}]}),
            json!({"size": [{"numeric": [">"]}]}),
            json!({"size": [{"numeric": ["~", 1]}]}),
            json!({"size": [{"exists": "yes"}]}),
            json!({"$or": []}),
            json!({"$or": {"type": ["x"]}}),
            json!({"a": [{"anything-but": {"wildcard": "x"}}]}),
        ] {
            assert!(Pattern::parse(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({"x": ["y"]});
        for _ in 0..10 {
            deep = json!({ "n": deep });
        }
        assert!(Pattern::parse(&deep).is_err());
        let many: Vec<Value> = (0..400).map(|i| json!(i)).collect();
        assert!(Pattern::parse(&json!({ "x": many })).is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("a*c", "abc"));
        assert!(wildcard("a*c", "ac"));
        assert!(!wildcard("a*c", "ab"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "a-b-c"));
        assert!(!wildcard("a*b*c", "a-c-b"));
        assert!(
            !wildcard("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z/.]{0,12}".prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn a_pattern_of_an_events_own_values_matches_it(fields in prop::collection::btree_map("[a-z]{1,6}", scalar(), 1..6)) {
            let event = Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            let pattern = Value::Object(fields.iter().map(|(k, v)| (k.clone(), json!([v]))).collect());
            prop_assert!(Pattern::parse(&pattern).unwrap().matches(&event));
            // anything-but its own value never matches.
            let (key, value) = fields.iter().next().unwrap();
            let negated = json!({ key.clone(): [{"anything-but": value}] });
            prop_assert!(!Pattern::parse(&negated).unwrap().matches(&event));
        }

        #[test]
        fn parsing_never_panics(text in ".{0,120}") {
            if let Ok(value) = serde_json::from_str::<Value>(&text)
                && let Ok(pattern) = Pattern::parse(&value)
            {
                let _ = pattern.matches(&value);
            }
        }
    }
}
