//! Every action a minicloud service checks: call sites name a variant, never a
//! string, and policies are checked against this list when they are written (an
//! action pattern that matches none of them is a typo, refused with 400).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    StorageCreateBucket,
    StorageDeleteBucket,
    StorageListObjects,
    StorageGetObject,
    StoragePutObject,
    StorageDeleteObject,
    DbCreateCollection,
    DbGetDocument,
    DbPutDocument,
    DbDeleteDocument,
    DbQuery,
    KvGet,
    KvPut,
    KvDelete,
    KvList,
    EventsPublish,
    EventsSubscribe,
    FunctionsDeploy,
    FunctionsDelete,
    FunctionsInvoke,
    FunctionsReadLogs,
    FunctionsPassRole,
    BillingReadUsage,
    BillingManageBudgets,
}

impl Action {
    pub const ALL: [Action; 24] = [
        Action::StorageCreateBucket,
        Action::StorageDeleteBucket,
        Action::StorageListObjects,
        Action::StorageGetObject,
        Action::StoragePutObject,
        Action::StorageDeleteObject,
        Action::DbCreateCollection,
        Action::DbGetDocument,
        Action::DbPutDocument,
        Action::DbDeleteDocument,
        Action::DbQuery,
        Action::KvGet,
        Action::KvPut,
        Action::KvDelete,
        Action::KvList,
        Action::EventsPublish,
        Action::EventsSubscribe,
        Action::FunctionsDeploy,
        Action::FunctionsDelete,
        Action::FunctionsInvoke,
        Action::FunctionsReadLogs,
        Action::FunctionsPassRole,
        Action::BillingReadUsage,
        Action::BillingManageBudgets,
    ];

    /// As policies write it: `<service>:<Name>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::StorageCreateBucket => "storage:CreateBucket",
            Action::StorageDeleteBucket => "storage:DeleteBucket",
            Action::StorageListObjects => "storage:ListObjects",
            Action::StorageGetObject => "storage:GetObject",
            Action::StoragePutObject => "storage:PutObject",
            Action::StorageDeleteObject => "storage:DeleteObject",
            Action::DbCreateCollection => "db:CreateCollection",
            Action::DbGetDocument => "db:GetDocument",
            Action::DbPutDocument => "db:PutDocument",
            Action::DbDeleteDocument => "db:DeleteDocument",
            Action::DbQuery => "db:Query",
            Action::KvGet => "kv:Get",
            Action::KvPut => "kv:Put",
            Action::KvDelete => "kv:Delete",
            Action::KvList => "kv:List",
            Action::EventsPublish => "events:Publish",
            Action::EventsSubscribe => "events:Subscribe",
            Action::FunctionsDeploy => "functions:Deploy",
            Action::FunctionsDelete => "functions:Delete",
            Action::FunctionsInvoke => "functions:Invoke",
            Action::FunctionsReadLogs => "functions:ReadLogs",
            Action::FunctionsPassRole => "functions:PassRole",
            Action::BillingReadUsage => "billing:ReadUsage",
            Action::BillingManageBudgets => "billing:ManageBudgets",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn every_action_names_a_policy_service_and_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for action in Action::ALL {
            let (service, name) = action.as_str().split_once(':').unwrap();
            assert!(crate::policy::SERVICES.contains(&service), "{action}");
            assert!(
                name.starts_with(|c: char| c.is_ascii_uppercase()),
                "{action}"
            );
            assert!(seen.insert(action.as_str()), "{action} twice");
        }
    }
}

/// What an action is on, for the resources whose name is all there is to them (no
/// resource policy of their own): call sites name the kind, the policy's resource
/// string is built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `events:<topic>`
    Topic(&'a str),
    /// `functions:<name>`
    Function(&'a str),
    /// `roles:<name>`, what `functions:PassRole` is on.
    Role(&'a str),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "events:{name}"),
            Resource::Function(name) => write!(f, "functions:{name}"),
            Resource::Role(name) => write!(f, "roles:{name}"),
        }
    }
}
