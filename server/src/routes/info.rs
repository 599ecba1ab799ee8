//! `GET /health`, `GET /v1/models`, `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{blocking, App};
use crate::error::ApiError;
use crate::metrics::StoreFigures;

pub async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    Json(json!({"status": "ok", "model": app.model_id}))
}

pub async fn models(State(app): State<Arc<App>>) -> impl IntoResponse {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.created,
            "owned_by": "kvpress",
        }],
    }))
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, ApiError> {
    let contexts = Arc::clone(&app.contexts);
    let stored = blocking(move || Ok(contexts.in_store().ok())).await?;
    let (contexts_in_memory, kv_bytes_in_memory) = app.contexts.in_memory();
    let figures = StoreFigures {
        contexts_in_memory,
        kv_bytes_in_memory,
        contexts_stored: stored.map(|s| s.0),
        bytes_stored: stored.map(|s| s.1),
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&figures),
    ))
}
