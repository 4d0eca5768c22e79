//! The policy language of docs/design.md §4: IAM-like statements, default deny, explicit deny
//! wins, `*`/`?` wildcards in actions and resources, `${auth.uid}` and `${auth.role}`
//! substituted from the caller.
//!
//! ```json
//! {"effect":"allow","principals":["role:authenticated"],
//!  "actions":["storage:GetObject","storage:PutObject"],
//!  "resources":["storage:photos/${auth.uid}/*"]}
//! ```
//! A policy document is one statement, an array of statements, or
//! `{"statements":[…]}`.

use serde::{Deserialize, Serialize};

use crate::caller::{Caller, Role};

pub const SERVICES: [&str; 7] = [
    "storage",
    "db",
    "kv",
    "events",
    "functions",
    // `roles:<name>`, the resource of `functions:PassRole`.
    "roles",
    // `billing:usage`, `billing:budgets/<name>`.
    "billing",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    /// `*`, `role:<name>`, `user:<uid>`. Empty in an identity policy means "the role
    /// the policy is attached to".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// Applies only when the resource's owner matches, e.g.
    /// `{"owner": "${auth.uid}"}`: row-level ownership, like an RLS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The resource's owner must match this (variables and wildcards allowed).
    pub owner: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum PolicyDocument {
    One(Statement),
    Many(Vec<Statement>),
    Wrapped { statements: Vec<Statement> },
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_json(value: &serde_json::Value) -> Result<Policy, PolicyError> {
        if value.is_null() {
            return Ok(Policy::default());
        }
        let document: PolicyDocument = serde_json::from_value(value.clone()).map_err(|_| {
            PolicyError(
                "expected a statement {effect, principals, actions, resources}, an array of them, or {\"statements\":[…]}".into(),
            )
        })?;
        let statements = match document {
            PolicyDocument::One(statement) => vec![statement],
            PolicyDocument::Many(statements) | PolicyDocument::Wrapped { statements } => statements,
        };
        if statements.len() > 100 {
            return Err(PolicyError("at most 100 statements".into()));
        }
        for statement in &statements {
            statement.validate()?;
        }
        Ok(Policy { statements })
    }

    pub fn from_json_str(text: &str) -> Result<Policy, PolicyError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        Policy::from_json(&value)
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

impl Statement {
    fn validate(&self) -> Result<(), PolicyError> {
        if self.actions.is_empty() || self.resources.is_empty() {
            return Err(PolicyError(
                "actions and resources must not be empty".into(),
            ));
        }
        for action in &self.actions {
            check_scoped(action, "action")?;
            let pattern = Pattern::parse(action)?;
            // A pattern with `${…}` variables is resolved per caller: let it be.
            let literal: Option<Vec<Token>> = pattern
                .0
                .iter()
                .map(|t| match t {
                    Token::Uid | Token::RoleName => None,
                    other => Some(other.clone()),
                })
                .collect();
            if let Some(tokens) = literal
                && !crate::Action::ALL
                    .iter()
                    .any(|known| matches(&tokens, known.as_str(), true))
            {
                return Err(PolicyError(format!(
                    "action {action:?} matches none of the actions minicloud checks (docs/api/policies.md)"
                )));
            }
        }
        for resource in &self.resources {
            check_scoped(resource, "resource")?;
            Pattern::parse(resource)?;
        }
        if let Some(owner) = self.condition.as_ref().map(|c| c.owner.as_str()) {
            if owner.is_empty() || owner.len() > 256 {
                return Err(PolicyError("condition.owner must be 1 to 256 bytes".into()));
            }
            Pattern::parse(owner)?;
        }
        for principal in &self.principals {
            let valid = principal == "*"
                || principal
                    .strip_prefix("role:")
                    .or_else(|| principal.strip_prefix("user:"))
                    .is_some_and(|rest| !rest.is_empty() && rest.len() <= 256);
            if !valid {
                return Err(PolicyError(format!(
                    "principal {principal:?}: expected \"*\", \"role:<name>\" or \"user:<uid>\""
                )));
            }
        }
        Ok(())
    }
}

/// `"*"` or `<service>:<rest>` with a known service.
fn check_scoped(value: &str, what: &str) -> Result<(), PolicyError> {
    if value == "*" {
        return Ok(());
    }
    if value.len() > 1024 {
        return Err(PolicyError(format!("{what} longer than 1024 bytes")));
    }
    match value.split_once(':') {
        Some((service, _)) if SERVICES.contains(&service) || service == "*" => Ok(()),
        _ => Err(PolicyError(format!(
            "{what} {value:?}: expected \"<service>:…\" with service one of {}",
            SERVICES.join(", ")
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters, `/` included.
    Star,
    /// `?`: exactly one character.
    One,
    Uid,
    RoleName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Token>);

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, PolicyError> {
        let mut tokens = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| PolicyError(format!("unclosed variable in {text:?}")))?;
                match &after[..end] {
                    "auth.uid" => tokens.push(Token::Uid),
                    "auth.role" => tokens.push(Token::RoleName),
                    other => {
                        return Err(PolicyError(format!(
                            "unknown variable ${{{other}}}: only ${{auth.uid}} and ${{auth.role}}"
                        )));
                    }
                }
                rest = &after[end + 1..];
                continue;
            }
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::One,
                c => Token::Literal(c),
            });
            rest = &rest[c.len_utf8()..];
        }
        Ok(Pattern(tokens))
    }

    /// Resolves variables to literal text. `None` when the caller lacks the value
    /// (an anonymous caller has no uid): such a statement cannot apply.
    fn resolve(&self, caller: &Caller) -> Option<Vec<Token>> {
        let mut out = Vec::with_capacity(self.0.len());
        for token in &self.0 {
            match token {
                Token::Uid => out.extend(caller.uid.as_deref()?.chars().map(Token::Literal)),
                Token::RoleName => out.extend(caller.role.name().chars().map(Token::Literal)),
                other => out.push(other.clone()),
            }
        }
        Some(out)
    }
}

/// Wildcard match with backtracking over the last `*` only: linear in practice,
/// O(n·m) at worst, never exponential.
fn matches(pattern: &[Token], text: &str, case_insensitive: bool) -> bool {
    let text: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if case_insensitive {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Literal(c)) if eq(*c, text[t]) => {
                p += 1;
                t += 1;
            }
            Some(Token::One) => {
                p += 1;
                t += 1;
            }
            Some(Token::Star) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..]
        .iter()
        .all(|token| *token == Token::Star)
}

fn pattern_matches(pattern: &str, value: &str, caller: &Caller, case_insensitive: bool) -> bool {
    let Ok(parsed) = Pattern::parse(pattern) else {
        return false;
    };
    match parsed.resolve(caller) {
        Some(tokens) => matches(&tokens, value, case_insensitive),
        None => false,
    }
}

fn principal_matches(principal: &str, caller: &Caller) -> bool {
    if principal == "*" {
        return true;
    }
    if let Some(role) = principal.strip_prefix("role:") {
        return role == caller.role.name();
    }
    if let Some(uid) = principal.strip_prefix("user:") {
        return caller.uid.as_deref() == Some(uid);
    }
    false
}

/// What is being asked: `storage:GetObject` on `storage:photos/u1/a.jpg`.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub action: &'a str,
    pub resource: &'a str,
    /// The resource's owner, when the service knows it (documents do).
    pub owner: Owner<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// Not known or not applicable: owner-conditioned statements do not apply.
    Unknown,
    /// The resource has this owner (`None`: nobody).
    Known(Option<&'a str>),
}

/// What a caller may see of a collection when some of its rights depend on owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Only resources owned by this value.
    OwnedBy(String),
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No statement allowed it.
    ImplicitDeny,
    /// A statement denied it.
    ExplicitDeny,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

impl Statement {
    fn applies(&self, caller: &Caller, access: Access<'_>, identity: bool) -> bool {
        self.targets(caller, access, identity) && self.condition_holds(caller, access.owner)
    }

    fn owner_condition(&self) -> Option<&str> {
        self.condition.as_ref().map(|c| c.owner.as_str())
    }

    fn condition_holds(&self, caller: &Caller, owner: Owner<'_>) -> bool {
        let Some(pattern) = self.owner_condition() else {
            return true;
        };
        match owner {
            Owner::Unknown | Owner::Known(None) => false,
            Owner::Known(Some(owner)) => pattern_matches(pattern, owner, caller, false),
        }
    }

    /// Principal, action and resource match (conditions aside).
    fn targets(&self, caller: &Caller, access: Access<'_>, identity: bool) -> bool {
        let principal_ok = if identity && self.principals.is_empty() {
            true
        } else {
            self.principals.iter().any(|p| principal_matches(p, caller))
        };
        principal_ok
            && self
                .actions
                .iter()
                .any(|a| pattern_matches(a, access.action, caller, true))
            && self
                .resources
                .iter()
                .any(|r| pattern_matches(r, access.resource, caller, false))
    }
}

/// Evaluates identity policies (attached to the caller's role) and resource policies
/// (attached to the bucket, collection or topic) together: any applicable deny wins,
/// else any applicable allow allows, else deny. The `service` role bypasses policies.
pub fn evaluate(
    caller: &Caller,
    access: Access<'_>,
    identity_policies: &[Policy],
    resource_policies: &[&Policy],
) -> Decision {
    if caller.role == Role::Service {
        return Decision::Allow;
    }
    let identity = identity_policies
        .iter()
        .flat_map(|p| &p.statements)
        .map(|s| (s, true));
    let resource = resource_policies
        .iter()
        .flat_map(|p| &p.statements)
        .map(|s| (s, false));
    let mut allowed = false;
    for (statement, is_identity) in identity.chain(resource) {
        if statement.applies(caller, access, is_identity) {
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

/// Like [`evaluate`] for a listing whose items have owners: everything, only what
/// one owner owns (the caller's rights come from owner-conditioned statements), or
/// nothing. Any applicable deny, conditioned or not, denies the whole listing.
pub fn evaluate_scoped(
    caller: &Caller,
    action: &str,
    resource: &str,
    identity_policies: &[Policy],
    resource_policies: &[&Policy],
) -> Scope {
    if caller.role == Role::Service {
        return Scope::All;
    }
    let access = Access {
        action,
        resource,
        owner: Owner::Unknown,
    };
    let identity = identity_policies
        .iter()
        .flat_map(|p| &p.statements)
        .map(|s| (s, true));
    let resource_statements = resource_policies
        .iter()
        .flat_map(|p| &p.statements)
        .map(|s| (s, false));
    let mut all = false;
    let mut owned = None;
    for (statement, is_identity) in identity.chain(resource_statements) {
        if !statement.targets(caller, access, is_identity) {
            continue;
        }
        match (statement.effect, statement.owner_condition()) {
            (Effect::Deny, _) => return Scope::Nothing,
            (Effect::Allow, None) => all = true,
            (Effect::Allow, Some(pattern)) => {
                // Only an exact owner (variables, no wildcards) can scope a listing.
                if let Ok(parsed) = Pattern::parse(pattern)
                    && let Some(tokens) = parsed.resolve(caller)
                    && tokens.iter().all(|t| matches!(t, Token::Literal(_)))
                {
                    owned = Some(
                        tokens
                            .iter()
                            .map(|t| if let Token::Literal(c) = t { *c } else { ' ' })
                            .collect(),
                    );
                }
            }
        }
    }
    match (all, owned) {
        (true, _) => Scope::All,
        (false, Some(owner)) => Scope::OwnedBy(owner),
        (false, None) => Scope::Nothing,
    }
}

#[cfg(test)]
mod tests;
