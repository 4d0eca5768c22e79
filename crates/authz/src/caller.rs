//! Who is calling: the role and, for users and role tokens, the subject.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// No token, or the anon key.
    Anon,
    /// A signed-in user.
    Authenticated,
    /// The service key: admin, bypasses policies.
    Service,
    /// A custom role (functions, service accounts).
    Custom(String),
}

impl Role {
    pub fn parse(name: &str) -> Role {
        match name {
            "anon" => Role::Anon,
            "authenticated" => Role::Authenticated,
            "service" => Role::Service,
            other => Role::Custom(other.to_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Role::Anon => "anon",
            Role::Authenticated => "authenticated",
            Role::Service => "service",
            Role::Custom(name) => name,
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    None,
    AccessToken,
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The user id for users; the token subject for role tokens (`fn:thumbnail`).
    pub uid: Option<String>,
    /// The refresh-token family the access token was issued from, for sign-out.
    pub session_id: Option<String>,
    pub credential: Credential,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            role: Role::Anon,
            uid: None,
            session_id: None,
            credential: Credential::None,
        }
    }

    pub fn service() -> Caller {
        Caller {
            role: Role::Service,
            uid: None,
            session_id: None,
            credential: Credential::ApiKey,
        }
    }

    pub fn user(uid: &str) -> Caller {
        Caller {
            role: Role::Authenticated,
            uid: Some(uid.to_owned()),
            session_id: None,
            credential: Credential::AccessToken,
        }
    }

    pub fn role(name: &str, subject: Option<&str>) -> Caller {
        Caller {
            role: Role::parse(name),
            uid: subject.map(str::to_owned),
            session_id: None,
            credential: Credential::AccessToken,
        }
    }

    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }

    /// The owner recorded on things this caller creates.
    pub fn owner(&self) -> Option<&str> {
        self.uid.as_deref()
    }
}

/// The claims of a minicloud access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iss: String,
    pub aud: String,
    /// Session (refresh-token family) id, named as Supabase names it; absent on
    /// role tokens. `sid` is what tokens issued before this name carried.
    #[serde(
        default,
        rename = "session_id",
        alias = "sid",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Authenticator assurance level (Supabase's `aal1` after a password or a
    /// one-time code); absent on role tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aal: Option<String>,
    /// Whether the user signed in anonymously; absent on role tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_anonymous: Option<bool>,
}

pub const ISSUER: &str = "minicloud-auth";
/// The audience of role tokens.
pub const AUDIENCE: &str = "minicloud";
/// The audience of users' access tokens: `authenticated`, as Supabase issues them,
/// so an app's own check of `aud` keeps working.
pub const USER_AUDIENCE: &str = "authenticated";
