//! `POST /api/publish/batch` (DESIGN §7): up to [`MAX_BATCH`] publications in one
//! request, applied in order, answered one result each, in order. All are handed to the
//! broker before any answer is awaited, so with Redis they travel as one pipeline, and
//! the frames they queue for one connection are written by one `writev` when its writer
//! wakes — the burst path a backend that publishes many at once needs.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::ApiError;
use super::publish::{answer, denied, publication_of};
use super::App;
use crate::broker::Submitted;
use crate::metrics::Source;
use crate::protocol::codes::ErrorCode;
use crate::protocol::publish::PublishRequest;

/// The most publications one batch may carry.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Kept raw: each entry is parsed on its own, so one bad entry is one error result.
    publications: Vec<Box<RawValue>>,
}

pub async fn publish_batch(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    let body = super::body::read(&app, &headers, body).await?;
    let accepted = Instant::now();
    let batch: BatchBody = super::body::object(&body)?;
    let n = batch.publications.len();
    if !(1..=MAX_BATCH).contains(&n) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("publications must hold 1 to {MAX_BATCH} entries, not {n}"),
        ));
    }
    // Every publication goes to the broker, in order, before any answer is awaited.
    let submitted: Vec<Result<Submitted, ApiError>> = batch
        .publications
        .iter()
        .map(|raw| {
            let req: PublishRequest = super::body::object(raw.get().as_bytes())?;
            Ok(app.broker.publish(publication_of(req, accepted)?))
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for s in submitted {
        let result = match s {
            Ok(s) => match s.wait().await {
                Ok(delivered) => {
                    app.metrics.answered(Source::Batch, &delivered);
                    answer(&delivered)
                }
                Err(d) => error_result(denied(d)),
            },
            Err(e) => error_result(e),
        };
        results.push(result);
    }
    Ok(Json(json!({ "results": results })))
}

fn error_result(e: ApiError) -> Value {
    json!({"error": e.code.as_str(), "message": e.message})
}
