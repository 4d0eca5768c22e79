//! The `thumbnail` function: on `minicloud.storage.object.created` in `photos`, reads
//! the photo, writes `thumbnails/<uid>/<name>.jpg` and a `photo_meta` document.
//! Idempotent: the thumbnail is an upsert and the document id derives from the photo's
//! path, so a redelivered event rewrites the same two things.
//!
//! It calls minicloud through the `sdk` with the role token the invoker gives it. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set it exports its own spans, children of the
//! invocation's trace (`Lambda-Runtime-Trace-Id`).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use minicloud_sdk::Client;
use serde_json::{Value, json};
use thumbnail::{document_id, thumbnail_path};
use tracing::Instrument as _;

const PHOTOS: &str = "photos";
const THUMBNAILS: &str = "thumbnails";
const COLLECTION: &str = "photo_meta";

async fn handle(client: &Client, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, context) = event.into_parts();
    let data = &event["data"];
    let path = data["path"].as_str().unwrap_or_default();
    if event["type"] != "minicloud.storage.object.created" || data["bucket"] != PHOTOS {
        return Ok(json!({"skipped": event["type"]}));
    }
    if path.is_empty() {
        return Err("the event names no photo path".into());
    }
    let span = tracing::info_span!(
        "thumbnail",
        otel.kind = "consumer",
        minicloud.service = "function",
        faas.invocation_id = %context.request_id,
        photo = %path,
    );
    if let Some(traceparent) = context
        .xray_trace_id
        .as_deref()
        .and_then(minicloud_sdk::traceparent_from_xray)
    {
        minicloud_telemetry::trace_context::continue_from_traceparent(&span, &traceparent);
    }
    async {
        let photo = client.download(PHOTOS, path).await?;
        let bytes = photo.len();
        let thumbnail =
            tokio::task::spawn_blocking(move || thumbnail::make_thumbnail(&photo)).await??;
        let thumbnail_path = thumbnail_path(path);
        client
            .upload(
                THUMBNAILS,
                &thumbnail_path,
                thumbnail.jpeg.clone(),
                "image/jpeg",
                true,
            )
            .await?;
        let metadata = json!({
            "owner": data["owner"],
            "original": format!("{PHOTOS}/{path}"),
            "thumbnail": format!("{THUMBNAILS}/{thumbnail_path}"),
            "original_width": thumbnail.original_width,
            "original_height": thumbnail.original_height,
            "thumbnail_width": thumbnail.width,
            "thumbnail_height": thumbnail.height,
            "bytes": bytes,
            "thumbnail_bytes": thumbnail.jpeg.len(),
            "content_type": data["content_type"],
            // The upload's time, not ours: a redelivery writes the same document.
            "created_at": event["time"],
        });
        let id = document_id(path);
        client.put_document(COLLECTION, &id, &metadata).await?;
        tracing::info!(photo = %path, thumbnail = %thumbnail_path, "thumbnail written");
        Ok(json!({"document": id, "metadata": metadata}))
    }
    .instrument(span)
    .await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry =
        minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig::from_env("thumbnail"));
    let client = Client::from_env();
    let telemetry = &telemetry;
    let client = &client;
    lambda_runtime::run(service_fn(move |event| async move {
        let result = handle(client, event).await;
        // Spans leave before the answer does: the instance may be stopped when idle.
        telemetry.flush();
        result
    }))
    .await
}
