//! Tests of [`super`] (policy.rs), kept beside it but out of its way.
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn user(uid: &str) -> Caller {
    Caller::user(uid)
}

fn anon() -> Caller {
    Caller::anonymous()
}

fn policy(value: serde_json::Value) -> Policy {
    Policy::from_json(&value).unwrap()
}

fn photos_policy() -> Policy {
    policy(json!({
        "effect": "allow",
        "principals": ["role:authenticated"],
        "actions": ["storage:GetObject", "storage:PutObject"],
        "resources": ["storage:photos/${auth.uid}/*"]
    }))
}

#[test]
fn table_of_decisions() {
    let photos = photos_policy();
    let deny_secret = policy(json!({
        "effect": "deny", "principals": ["*"], "actions": ["storage:*"],
        "resources": ["storage:photos/*/secret/*"]
    }));
    let fn_role = policy(json!([
        {"effect":"allow","actions":["storage:GetObject"],"resources":["storage:photos/*"]},
        {"effect":"allow","actions":["storage:PutObject"],"resources":["storage:thumbnails/*"]},
        {"effect":"allow","actions":["db:PutDocument"],"resources":["db:photo_meta/*"]}
    ]));
    let thumb = Caller::role("thumbnail", Some("fn:thumbnail"));
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Caller,
        &str,
        &str,
        Vec<Policy>,
        Vec<&Policy>,
        Decision,
    )> = vec![
        (
            "own photo",
            user("u1"),
            "storage:GetObject",
            "storage:photos/u1/a.jpg",
            vec![],
            vec![&photos],
            Decision::Allow,
        ),
        (
            "nested path under own uid",
            user("u1"),
            "storage:PutObject",
            "storage:photos/u1/2024/a.jpg",
            vec![],
            vec![&photos],
            Decision::Allow,
        ),
        (
            "someone else's photo",
            user("u1"),
            "storage:GetObject",
            "storage:photos/u2/a.jpg",
            vec![],
            vec![&photos],
            Decision::ImplicitDeny,
        ),
        (
            "uid prefix is not the uid",
            user("u1"),
            "storage:GetObject",
            "storage:photos/u10/a.jpg",
            vec![],
            vec![&photos],
            Decision::ImplicitDeny,
        ),
        (
            "action not granted",
            user("u1"),
            "storage:DeleteObject",
            "storage:photos/u1/a.jpg",
            vec![],
            vec![&photos],
            Decision::ImplicitDeny,
        ),
        (
            "anon has no uid",
            anon(),
            "storage:GetObject",
            "storage:photos//a.jpg",
            vec![],
            vec![&photos],
            Decision::ImplicitDeny,
        ),
        (
            "explicit deny wins",
            user("u1"),
            "storage:GetObject",
            "storage:photos/u1/secret/a",
            vec![],
            vec![&photos, &deny_secret],
            Decision::ExplicitDeny,
        ),
        (
            "no policy at all",
            user("u1"),
            "storage:GetObject",
            "storage:photos/u1/a.jpg",
            vec![],
            vec![],
            Decision::ImplicitDeny,
        ),
        (
            "service bypasses",
            Caller::service(),
            "storage:DeleteBucket",
            "storage:photos",
            vec![],
            vec![&deny_secret],
            Decision::Allow,
        ),
        (
            "identity policy of role",
            thumb.clone(),
            "storage:GetObject",
            "storage:photos/u1/a.jpg",
            vec![fn_role.clone()],
            vec![],
            Decision::Allow,
        ),
        (
            "role may write thumbnails",
            thumb.clone(),
            "storage:PutObject",
            "storage:thumbnails/u1/a.jpg",
            vec![fn_role.clone()],
            vec![],
            Decision::Allow,
        ),
        (
            "role may not write photos",
            thumb.clone(),
            "storage:PutObject",
            "storage:photos/u1/a.jpg",
            vec![fn_role.clone()],
            vec![],
            Decision::ImplicitDeny,
        ),
        (
            "role may not delete docs",
            thumb.clone(),
            "db:DeleteDocument",
            "db:photo_meta/x",
            vec![fn_role.clone()],
            vec![],
            Decision::ImplicitDeny,
        ),
        (
            "actions are case-insensitive",
            thumb.clone(),
            "DB:putdocument",
            "db:photo_meta/x",
            vec![fn_role.clone()],
            vec![],
            Decision::Allow,
        ),
        (
            "resources are case-sensitive",
            thumb.clone(),
            "db:PutDocument",
            "db:Photo_meta/x",
            vec![fn_role],
            vec![],
            Decision::ImplicitDeny,
        ),
    ];
    for (name, caller, action, resource, identity, resource_policies, expected) in cases {
        let got = evaluate(
            &caller,
            Access {
                action,
                resource,
                owner: Owner::Unknown,
            },
            &identity,
            &resource_policies,
        );
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn principals_select_callers_in_resource_policies() {
    let only_u2 = policy(
        json!({"effect":"allow","principals":["user:u2"],"actions":["*"],"resources":["*"]}),
    );
    let access = Access {
        action: "db:GetDocument",
        resource: "db:c/1",
        owner: Owner::Unknown,
    };
    assert_eq!(
        evaluate(&user("u1"), access, &[], &[&only_u2]),
        Decision::ImplicitDeny
    );
    assert_eq!(
        evaluate(&user("u2"), access, &[], &[&only_u2]),
        Decision::Allow
    );
    // A resource statement without principals applies to nobody.
    let nobody = policy(json!({"effect":"allow","actions":["*"],"resources":["*"]}));
    assert_eq!(
        evaluate(&user("u2"), access, &[], &[&nobody]),
        Decision::ImplicitDeny
    );
}

#[test]
fn role_variable_is_substituted() {
    let by_role = policy(
        json!({"effect":"allow","principals":["*"],"actions":["kv:Get"],"resources":["kv:${auth.role}/*"]}),
    );
    let access = Access {
        action: "kv:Get",
        resource: "kv:authenticated/k",
        owner: Owner::Unknown,
    };
    assert_eq!(
        evaluate(&user("u1"), access, &[], &[&by_role]),
        Decision::Allow
    );
    assert_eq!(
        evaluate(&anon(), access, &[], &[&by_role]),
        Decision::ImplicitDeny
    );
}

#[test]
fn a_uid_with_wildcard_characters_is_matched_literally() {
    let photos = photos_policy();
    let sneaky = user("*");
    let access = Access {
        action: "storage:GetObject",
        resource: "storage:photos/u2/a.jpg",
        owner: Owner::Unknown,
    };
    assert_eq!(
        evaluate(&sneaky, access, &[], &[&photos]),
        Decision::ImplicitDeny
    );
}

#[test]
fn invalid_documents_are_rejected_with_a_reason() {
    for bad in [
        json!({"effect":"maybe","actions":["*"],"resources":["*"]}),
        json!({"effect":"allow","actions":[],"resources":["*"]}),
        json!({"effect":"allow","actions":["s3:GetObject"],"resources":["*"]}),
        json!({"effect":"allow","actions":["*"],"resources":["storage:${auth.email}"]}),
        json!({"effect":"allow","actions":["*"],"resources":["storage:${auth.uid"]}),
        json!({"effect":"allow","principals":["admin"],"actions":["*"],"resources":["*"]}),
        json!({"effect":"allow","actions":["*"],"resources":["*"],"condition":{}}),
        json!("allow everything"),
    ] {
        assert!(Policy::from_json(&bad).is_err(), "{bad}");
    }
    assert_eq!(policy(json!({"statements":[]})).statements.len(), 0);
}

#[test]
fn action_patterns_must_match_an_action_the_services_check() {
    let with_action = |action: &str| {
        Policy::from_json(&json!({"effect":"allow","actions":[action],"resources":["*"]}))
    };
    // Typos and actions no service checks would never allow anything.
    for typo in [
        "storage:GetObjects",
        "db:Get",
        "events:Publsh",
        "functions:Run*",
    ] {
        let error = with_action(typo).unwrap_err().to_string();
        assert!(error.contains("matches none"), "{typo}: {error}");
    }
    // Exact (in any case), wildcards and a whole service are fine.
    for fine in [
        "*",
        "storage:*",
        "storage:getobject",
        "storage:Get*",
        "kv:???",
        "*:Put*",
        "functions:PassRole",
    ] {
        assert!(with_action(fine).is_ok(), "{fine}");
    }
}

#[test]
fn owner_conditions_apply_only_to_the_owners_resources() {
    let mine = policy(
        json!({"effect":"allow","principals":["role:authenticated"],"actions":["db:*"],
        "resources":["db:notes","db:notes/*"],"condition":{"owner":"${auth.uid}"}}),
    );
    let get = |owner| Access {
        action: "db:GetDocument",
        resource: "db:notes/d1",
        owner: Owner::Known(owner),
    };
    assert_eq!(
        evaluate(&user("u1"), get(Some("u1")), &[], &[&mine]),
        Decision::Allow
    );
    assert_eq!(
        evaluate(&user("u1"), get(Some("u2")), &[], &[&mine]),
        Decision::ImplicitDeny
    );
    assert_eq!(
        evaluate(&user("u1"), get(None), &[], &[&mine]),
        Decision::ImplicitDeny
    );
    let unknown = Access {
        action: "db:GetDocument",
        resource: "db:notes/d1",
        owner: Owner::Unknown,
    };
    assert_eq!(
        evaluate(&user("u1"), unknown, &[], &[&mine]),
        Decision::ImplicitDeny
    );
    assert_eq!(
        evaluate(&anon(), get(Some("u1")), &[], &[&mine]),
        Decision::ImplicitDeny
    );
    // Listing: scoped to the caller's own documents.
    assert_eq!(
        evaluate_scoped(&user("u1"), "db:Query", "db:notes", &[], &[&mine]),
        Scope::OwnedBy("u1".into())
    );
    let everyone = policy(
        json!({"effect":"allow","principals":["*"],"actions":["db:Query"],"resources":["db:notes"]}),
    );
    assert_eq!(
        evaluate_scoped(
            &user("u1"),
            "db:Query",
            "db:notes",
            &[],
            &[&mine, &everyone]
        ),
        Scope::All
    );
    let deny = policy(
        json!({"effect":"deny","principals":["*"],"actions":["db:Query"],"resources":["db:notes"]}),
    );
    assert_eq!(
        evaluate_scoped(&user("u1"), "db:Query", "db:notes", &[], &[&mine, &deny]),
        Scope::Nothing
    );
    assert_eq!(
        evaluate_scoped(&anon(), "db:Query", "db:notes", &[], &[&mine]),
        Scope::Nothing
    );
    assert_eq!(
        evaluate_scoped(&Caller::service(), "db:Query", "db:notes", &[], &[]),
        Scope::All
    );
    assert!(
        Policy::from_json(
            &json!({"effect":"allow","actions":["*"],"resources":["*"],"condition":{"group":"x"}})
        )
        .is_err()
    );
}

#[test]
fn wildcards() {
    let p = |s: &str| Pattern::parse(s).unwrap().0;
    assert!(matches(&p("a*c"), "abbbc", false));
    assert!(matches(&p("a*c"), "ac", false));
    assert!(matches(&p("a?c"), "abc", false));
    assert!(!matches(&p("a?c"), "ac", false));
    assert!(matches(&p("*"), "", false));
    assert!(matches(&p("a*b*c*"), "a-b-c-d", false));
    assert!(!matches(&p("a*b*c"), "a-b-c-d", false));
    assert!(matches(&p("photos/*/*.jpg"), "photos/u1/x/y.jpg", false));
    // Pathological input stays fast (no exponential backtracking).
    let long = "a".repeat(5000);
    assert!(!matches(&p("*a*a*a*a*a*a*b"), &long, false));
}

fn arb_statement(effect: Effect) -> impl Strategy<Value = Statement> {
    let action = prop::sample::select(vec![
        "*",
        "storage:*",
        "storage:GetObject",
        "db:*",
        "storage:Get*",
    ]);
    let resource = prop::sample::select(vec![
        "*",
        "storage:*",
        "storage:a/*",
        "storage:a/${auth.uid}/*",
        "db:c/*",
    ]);
    let principal = prop::sample::select(vec!["*", "role:authenticated", "user:u1", "role:anon"]);
    (
        prop::collection::vec(action, 1..3),
        prop::collection::vec(resource, 1..3),
        prop::collection::vec(principal, 0..3),
    )
        .prop_map(move |(actions, resources, principals)| Statement {
            effect,
            condition: None,
            principals: principals.into_iter().map(String::from).collect(),
            actions: actions.into_iter().map(String::from).collect(),
            resources: resources.into_iter().map(String::from).collect(),
        })
}

fn arb_caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        Just(user("u1")),
        Just(user("u2")),
        Just(anon()),
        Just(Caller::role("fn", None))
    ]
}

fn arb_access() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec!["storage:GetObject", "storage:PutObject", "db:Query"]),
        prop::sample::select(vec![
            "storage:a/u1/x",
            "storage:a/u2/x",
            "storage:b",
            "db:c/1",
        ]),
    )
        .prop_map(|(a, r)| (a.to_owned(), r.to_owned()))
}

proptest! {
    #[test]
    fn deny_always_beats_allow(
        allows in prop::collection::vec(arb_statement(Effect::Allow), 0..5),
        denies in prop::collection::vec(arb_statement(Effect::Deny), 1..3),
        caller in arb_caller(),
        (action, resource) in arb_access(),
    ) {
        let access = Access { action: &action, resource: &resource, owner: Owner::Unknown };
        let deny_applies = denies.iter().any(|s| s.applies(&caller, access, true) || s.applies(&caller, access, false));
        let identity = Policy { statements: allows.iter().cloned().chain(denies.iter().cloned()).collect() };
        let resource_policy = Policy { statements: allows.clone() };
        let decision = evaluate(&caller, access, &[identity], &[&resource_policy]);
        if deny_applies && denies.iter().any(|s| s.applies(&caller, access, true)) {
            prop_assert_eq!(decision, Decision::ExplicitDeny);
        }
        // Adding a deny statement never turns a deny into an allow.
        let without_denies = evaluate(&caller, access, &[Policy { statements: allows.clone() }], &[&resource_policy]);
        if !without_denies.is_allowed() {
            prop_assert!(!decision.is_allowed());
        }
    }

    #[test]
    fn no_statement_means_deny(caller in arb_caller(), (action, resource) in arb_access()) {
        let access = Access { action: &action, resource: &resource, owner: Owner::Unknown };
        prop_assert_eq!(evaluate(&caller, access, &[], &[]), Decision::ImplicitDeny);
        prop_assert_eq!(evaluate(&caller, access, &[Policy::default()], &[&Policy::default()]), Decision::ImplicitDeny);
    }

    #[test]
    fn the_parser_never_panics(text in ".{0,200}") {
        let _ = Policy::from_json_str(&text);
        let _ = Pattern::parse(&text);
    }
}
