//! The gRPC API for other services and functions: the same operations as REST,
//! authorised with the caller's token from the `authorization` metadata.

use minicloud_authz::Action;
use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use minicloud_proto::storage::v1::put_object_chunk::Part;
use minicloud_proto::storage::v1::storage_service_server::StorageService;
use minicloud_proto::storage::v1::{
    Bucket, GetObjectChunk, GetObjectRequest, ListBucketsRequest, ListBucketsResponse,
    ListObjectsRequest, ListObjectsResponse, ObjectInfo, ObjectRef, PutObjectChunk,
};
use tonic::{Request, Response, Status, Streaming};

use crate::Storage;
use crate::backend::{ByteRange, ByteStream};
use crate::objects::{ObjectRecord, Preconditions, WriteRequest};
use crate::paths::{normalise_path, normalise_prefix};

pub(crate) struct StorageGrpc(pub Storage);

fn object_ref(bucket: &str, path: &str) -> Result<(String, String), Status> {
    crate::buckets::check_bucket_name(bucket)?;
    Ok((bucket.to_owned(), normalise_path(path)?))
}

fn info(object: &ObjectRecord) -> ObjectInfo {
    ObjectInfo {
        bucket: object.bucket.clone(),
        path: object.name.clone(),
        size: object.size as u64,
        content_type: object.content_type.clone(),
        etag: object.etag.clone(),
        metadata_json: object.metadata.to_string(),
        owner: object.owner.clone().unwrap_or_default(),
        created_at: object.created_at.to_rfc3339(),
        updated_at: object.updated_at.to_rfc3339(),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<GetObjectChunk, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for StorageGrpc {
    type GetObjectStream = ChunkStream;

    async fn list_buckets(
        &self,
        request: Request<ListBucketsRequest>,
    ) -> Result<Response<ListBucketsResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let buckets = crate::buckets::visible_buckets(&self.0, &caller)
            .await?
            .into_iter()
            .map(|bucket| Bucket {
                name: bucket.name,
                public: bucket.public,
                owner: bucket.owner.unwrap_or_default(),
                created_at: bucket.created_at.to_rfc3339(),
            })
            .collect();
        Ok(Response::new(ListBucketsResponse { buckets }))
    }

    async fn head_object(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let (bucket, path) = object_ref(&request.get_ref().bucket, &request.get_ref().path)?;
        let object = self.0.authorize_read(&caller, &bucket, &path).await?;
        Ok(Response::new(info(&object)))
    }

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        let (bucket, path) = object_ref(&request.bucket, &request.path)?;
        let object = self.0.authorize_read(&caller, &bucket, &path).await?;
        let range = if request.has_range {
            let size = object.size as u64;
            if request.range_start > request.range_end || request.range_start >= size {
                return Err(Status::out_of_range("range not satisfiable"));
            }
            Some(ByteRange {
                start: request.range_start,
                end: request.range_end.min(size.saturating_sub(1)),
            })
        } else {
            None
        };
        let (object, bytes) = self
            .0
            .open(object, range, Some(minicloud_metering::owner_of(&caller)))
            .await?;
        let mut first = Some(info(&object));
        let stream = bytes.map(move |chunk| match chunk {
            Ok(data) => Ok(GetObjectChunk {
                info: first.take(),
                data: data.to_vec(),
            }),
            Err(error) => Err(Status::unavailable(format!(
                "reading the object failed: {error}"
            ))),
        });
        // An empty object still answers its info.
        let stream: ChunkStream = if object.size == 0 {
            Box::pin(futures::stream::once(async move {
                Ok(GetObjectChunk {
                    info: Some(info(&object)),
                    data: Vec::new(),
                })
            }))
        } else {
            Box::pin(stream)
        };
        Ok(Response::new(stream))
    }

    async fn put_object(
        &self,
        request: Request<Streaming<PutObjectChunk>>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let mut incoming = request.into_inner();
        let header = match incoming.next().await {
            Some(Ok(PutObjectChunk {
                part: Some(Part::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the header",
                ));
            }
        };
        let (bucket, path) = object_ref(&header.bucket, &header.path)?;
        let metadata = if header.metadata_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&header.metadata_json)
                    .map_err(|_| Status::invalid_argument("metadata_json is not JSON"))?,
            )
        };
        let write = WriteRequest {
            bucket,
            path,
            content_type: (!header.content_type.is_empty()).then(|| header.content_type.clone()),
            metadata,
            cache_control: None,
            content_encoding: None,
            content_disposition: None,
            declared_length: None,
            preconditions: Preconditions {
                if_match: (!header.if_match.is_empty()).then(|| vec![header.if_match.clone()]),
                must_not_exist: false,
                create_only: header.create_only,
            },
        };
        let body: ByteStream = Box::pin(incoming.map(|message| match message {
            Ok(PutObjectChunk {
                part: Some(Part::Data(data)),
            }) => Ok(bytes::Bytes::from(data)),
            Ok(_) => Err(std::io::Error::other("only data may follow the header")),
            Err(status) => Err(std::io::Error::other(status.message().to_owned())),
        }));
        let owner = caller.owner().map(str::to_owned);
        let object = self.0.write_object(&caller, write, body, owner).await?;
        Ok(Response::new(info(&object)))
    }

    async fn delete_object(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let (bucket, path) = object_ref(&request.get_ref().bucket, &request.get_ref().path)?;
        let object = self
            .0
            .delete_object(&caller, &bucket, &path, &Preconditions::default())
            .await?;
        Ok(Response::new(info(&object)))
    }

    async fn list_objects(
        &self,
        request: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsResponse>, Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        crate::buckets::check_bucket_name(&request.bucket)?;
        let prefix = normalise_prefix(&request.prefix)?;
        let limit = match request.limit {
            0 => 100,
            n if n <= 1000 => n as usize,
            _ => return Err(Status::invalid_argument("limit must be 1 to 1000")),
        };
        let bucket = self.0.load_bucket(&request.bucket).await?;
        self.0
            .authorize_object(&caller, Action::StorageListObjects, &bucket, &prefix)
            .await?;
        // A listing is a class-A (write-priced) request, as in S3.
        self.0.meter_request(
            &request.bucket,
            &minicloud_metering::owner_of(&caller),
            minicloud_metering::Meter::StorageWriteRequests,
        );
        let delimiter = (!request.delimiter.is_empty()).then_some(request.delimiter.as_str());
        let cursor = (!request.cursor.is_empty()).then_some(request.cursor.as_str());
        let page = self
            .0
            .list_objects(&request.bucket, &prefix, delimiter, limit, cursor)
            .await?;
        Ok(Response::new(ListObjectsResponse {
            objects: page.objects.iter().map(info).collect(),
            prefixes: page.prefixes,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }
}
