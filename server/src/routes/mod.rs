//! The HTTP API: routes, the API key check, body limits and response counting.

mod completions;
mod contexts;
mod info;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kvpress::models::LoadedModel;

use crate::contexts::Contexts;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::options::ServeOptions;

/// What every handler shares.
pub struct App {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// Its id in the API (`GET /v1/models`).
    pub model_id: String,
    /// Where answers and compressions run.
    pub engine: Engine,
    /// The stored contexts.
    pub contexts: Arc<Contexts>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The server's settings.
    pub options: ServeOptions,
    /// When the server started (Unix seconds).
    pub created: u64,
}

/// The router of the API.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.options.max_body_bytes;
    Router::new()
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .route("/v1/models", get(info::models))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::text))
        .route("/v1/contexts", post(contexts::create).get(contexts::list))
        .route(
            "/v1/contexts/{id}",
            get(contexts::show).delete(contexts::delete),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            guard,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Checks the API key (every route but `/health`) and counts responses by route and status.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = if route != "/health" && !authorized(&app, &request) {
        ApiError::unauthorized().into_response()
    } else {
        next.run(request).await
    };
    app.metrics
        .count_response(&route, response.status().as_u16());
    response
}

fn authorized(app: &App, request: &Request) -> bool {
    let Some(key) = &app.options.api_key else {
        return true;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in full whatever the first difference, so timing does not reveal the key.
    given.is_some_and(|given| {
        given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "unknown_route",
        "no such route: the API has GET /health, /metrics, /v1/models, /v1/contexts, \
         /v1/contexts/{id}; POST /v1/chat/completions, /v1/completions, /v1/contexts; DELETE \
         /v1/contexts/{id}",
    )
}

/// A request body, or the error for a body that is too large or could not be read.
pub fn body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.options.max_body_bytes)
        } else {
            ApiError::bad_request(format!("the request body could not be read: {rejection}"))
        }
    })
}

/// Checks that a request names the served model.
pub fn check_model(app: &App, model: &str) -> Result<(), ApiError> {
    if model == app.model_id {
        Ok(())
    } else {
        Err(ApiError {
            param: Some("model".to_string()),
            ..ApiError::not_found(
                "model_not_found",
                format!("no model `{model}`: this server serves `{}`", app.model_id),
            )
        })
    }
}

/// Runs blocking work (store reads, context loading) off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}
