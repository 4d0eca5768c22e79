//! The gRPC API: the REST operations for other services and functions, with the
//! caller's token from the `authorization` metadata.

use minicloud_authz::Action;
use minicloud_proto::docdb::v1::docdb_service_server::DocdbService;
use minicloud_proto::docdb::v1::{
    Collection, Document, DocumentRef, KvDeleteResponse, KvIncrRequest, KvPutRequest, KvRef,
    KvValue, ListCollectionsRequest, ListCollectionsResponse, QueryRequest, QueryResponse,
    WriteRequest, WriteResponse,
};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::Docdb;
use crate::documents::{DocOut, Write, WriteKind};
use crate::kv::{KvCondition, KvOut};

pub(crate) struct DocdbGrpc(pub Docdb);

fn json(text: &str, what: &str) -> Result<Value, Status> {
    serde_json::from_str(text)
        .map_err(|_| Status::invalid_argument(format!("{what} is not valid JSON")))
}

fn document(doc: DocOut) -> Document {
    Document {
        id: doc.id,
        version: doc.version,
        owner: doc.owner.unwrap_or_default(),
        created_at: doc.created_at.to_rfc3339(),
        updated_at: doc.updated_at.to_rfc3339(),
        data_json: doc.data.to_string(),
    }
}

fn kv_value(out: KvOut) -> KvValue {
    KvValue {
        key: out.key,
        value_json: out.value.to_string(),
        version: out.version,
        expires_at: out.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl DocdbService for DocdbGrpc {
    async fn list_collections(
        &self,
        request: Request<ListCollectionsRequest>,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let collections = crate::collections::visible_collections(&self.0, &caller)
            .await?
            .into_iter()
            .map(|collection| Collection {
                name: collection.name,
                created_at: collection.created_at.to_rfc3339(),
            })
            .collect();
        Ok(Response::new(ListCollectionsResponse { collections }))
    }

    async fn get_document(
        &self,
        request: Request<DocumentRef>,
    ) -> Result<Response<Document>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let reference = request.into_inner();
        Ok(Response::new(document(
            self.0
                .get_document(&caller, &reference.collection, &reference.id)
                .await?,
        )))
    }

    async fn can_read(
        &self,
        request: Request<minicloud_proto::docdb::v1::CanReadRequest>,
    ) -> Result<Response<minicloud_proto::docdb::v1::CanReadResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        crate::documents::check_id(&request.id)?;
        self.0.collection_policy(&request.collection).await?;
        let owner = (!request.owner.is_empty()).then_some(request.owner.as_str());
        let allowed = match self
            .0
            .authorize_doc(
                &caller,
                Action::DbGetDocument,
                &request.collection,
                &request.id,
                owner,
            )
            .await
        {
            Ok(()) => true,
            Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {
                false
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(minicloud_proto::docdb::v1::CanReadResponse {
            allowed,
        }))
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let ops = request.into_inner().writes;
        if ops.is_empty() || ops.len() > crate::rest::MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "1 to {} writes",
                crate::rest::MAX_BATCH
            )));
        }
        let mut writes = Vec::with_capacity(ops.len());
        for op in ops {
            let kind = match op.op.as_str() {
                "create" => WriteKind::Create,
                "put" => WriteKind::Put,
                "patch" => WriteKind::Patch,
                "delete" => WriteKind::Delete,
                other => return Err(Status::invalid_argument(format!("unknown op {other:?}"))),
            };
            writes.push(Write {
                op: kind,
                collection: op.collection,
                id: (!op.id.is_empty()).then_some(op.id),
                data: if op.data_json.is_empty() {
                    None
                } else {
                    Some(json(&op.data_json, "data_json")?)
                },
                if_match: op.if_match,
                if_none_match: op.if_none_match,
            });
        }
        let applied = self.0.apply_writes(&caller, writes).await?;
        Ok(Response::new(WriteResponse {
            documents: applied
                .into_iter()
                .filter_map(|a| a.document)
                .map(document)
                .collect(),
        }))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        let query = if request.query_json.is_empty() {
            crate::query::QueryIn::default()
        } else {
            serde_json::from_str(&request.query_json)
                .map_err(|e| Status::invalid_argument(format!("query_json: {e}")))?
        };
        let out = self.0.query(&caller, &request.collection, &query).await?;
        Ok(Response::new(QueryResponse {
            documents: out.documents.into_iter().map(document).collect(),
            next_cursor: out.next_cursor.unwrap_or_default(),
            count: out.count,
        }))
    }

    async fn kv_get(&self, request: Request<KvRef>) -> Result<Response<KvValue>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let r = request.into_inner();
        Ok(Response::new(kv_value(
            self.0.kv_get(&caller, &r.namespace, &r.key).await?,
        )))
    }

    async fn kv_put(&self, request: Request<KvPutRequest>) -> Result<Response<KvValue>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let r = request.into_inner();
        let value = json(&r.value_json, "value_json")?;
        let condition = KvCondition {
            if_match: r.if_match,
            if_none_match: r.if_none_match,
        };
        Ok(Response::new(kv_value(
            self.0
                .kv_put(
                    &caller,
                    &r.namespace,
                    &r.key,
                    value,
                    r.ttl_seconds,
                    condition,
                )
                .await?,
        )))
    }

    async fn kv_delete(
        &self,
        request: Request<KvRef>,
    ) -> Result<Response<KvDeleteResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let r = request.into_inner();
        self.0
            .kv_delete(&caller, &r.namespace, &r.key, KvCondition::default())
            .await?;
        Ok(Response::new(KvDeleteResponse {}))
    }

    async fn kv_incr(&self, request: Request<KvIncrRequest>) -> Result<Response<KvValue>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let r = request.into_inner();
        let by = if r.by == 0.0 { 1.0 } else { r.by };
        Ok(Response::new(kv_value(
            self.0.kv_incr(&caller, &r.namespace, &r.key, by).await?,
        )))
    }
}
