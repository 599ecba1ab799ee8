//! `POST /v1/contexts` (compress and store), `GET /v1/contexts`, `GET` and `DELETE
//! /v1/contexts/{id}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use kvpress::core::press::press_from_value;
use serde_json::{json, Value};

use super::{blocking, body, App};
use crate::error::ApiError;
use crate::openai::{parse, ContextRequest};

pub async fn create(
    State(app): State<Arc<App>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: ContextRequest = parse(&body(&app, raw)?)?;
    let press = press_from_value(request.press)
        .map_err(|e| ApiError::bad_field("press", format!("invalid press config: {e}")))?;
    let context = app.engine.compress(request.text, press).await?;
    Ok(Json(
        serde_json::to_value(&context.info).unwrap_or_default(),
    ))
}

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let contexts = Arc::clone(&app.contexts);
    let data = blocking(move || contexts.list()).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn show(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let contexts = Arc::clone(&app.contexts);
    let context = blocking(move || contexts.get(&id)).await?;
    Ok(Json(
        serde_json::to_value(&context.info).unwrap_or_default(),
    ))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let contexts = Arc::clone(&app.contexts);
    let deleted = id.clone();
    blocking(move || contexts.delete(&id)).await?;
    Ok(Json(
        json!({"id": deleted, "object": "context.deleted", "deleted": true}),
    ))
}
