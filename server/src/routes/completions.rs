//! `POST /v1/chat/completions` and `POST /v1/completions`: one JSON answer, or server-sent
//! events (`stream`), ending with `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvpress::core::press::press_from_value;
use kvpress::hooks::{check_press, FrontEnd};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{blocking, body, check_model, App};
use crate::contexts::StoredContext;
use crate::engine::{Event, Start};
use crate::error::ApiError;
use crate::openai::{self, parse, ChatRequest, CompletionRequest, Generation, Prompt, Settings};

/// Chat or text completion: the two differ in their objects' shapes only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat(State(app): State<Arc<App>>, raw: Result<Bytes, BytesRejection>) -> Response {
    into_response(chat_answer(app, raw).await)
}

pub async fn text(State(app): State<Arc<App>>, raw: Result<Bytes, BytesRejection>) -> Response {
    into_response(text_answer(app, raw).await)
}

fn into_response(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_answer(
    app: Arc<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&body(&app, raw)?)?;
    check_model(&app, &request.model)?;
    let settings = openai::settings(&request.generation, app.options.max_tokens_limit)?;
    let context = stored_context(&app, &request.generation).await?;
    let press = request_press(&request.generation)?;
    let start = openai::chat_start(&app.model, &request, context, press)?;
    answer(app, Kind::Chat, start, settings).await
}

async fn text_answer(
    app: Arc<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&body(&app, raw)?)?;
    check_model(&app, &request.model)?;
    let settings = openai::settings(&request.generation, app.options.max_tokens_limit)?;
    let prompt = match request.prompt {
        Prompt::One(prompt) => prompt,
        Prompt::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        Prompt::Many(prompts) => {
            return Err(ApiError::bad_field(
                "prompt",
                format!(
                    "{} prompts: one prompt per request is supported",
                    prompts.len()
                ),
            ))
        }
    };
    if request.generation.press.is_some() {
        return Err(ApiError::bad_field(
            "press",
            "a press per request compresses a conversation's earlier messages: use \
             /v1/chat/completions, or store a context (POST /v1/contexts) and pass its context_id",
        ));
    }
    if prompt.is_empty() {
        return Err(ApiError::bad_field("prompt", "the prompt is empty"));
    }
    let start = match stored_context(&app, &request.generation).await? {
        Some(context) => Start::Context {
            context,
            question: prompt,
        },
        None => Start::Prompt {
            ids: app
                .model
                .tokenizer
                .encode(&prompt, true)
                .map_err(|e| ApiError::bad_field("prompt", e.to_string()))?,
        },
    };
    answer(app, Kind::Text, start, settings).await
}

/// The stored context a request names, if it names one.
async fn stored_context(
    app: &Arc<App>,
    generation: &Generation,
) -> Result<Option<Arc<StoredContext>>, ApiError> {
    if generation.context_id.is_some() && generation.press.is_some() {
        return Err(ApiError::bad_field(
            "press",
            "give context_id (a context compressed already) or press (compress this request's \
             context), not both",
        ));
    }
    let Some(id) = generation.context_id.clone() else {
        return Ok(None);
    };
    let contexts = Arc::clone(&app.contexts);
    let context = blocking(move || contexts.get(&id)).await?;
    Ok(Some(context))
}

/// The press a request carries, checked.
fn request_press(
    generation: &Generation,
) -> Result<Option<Box<dyn kvpress::core::press::Press>>, ApiError> {
    let Some(config) = generation.press.clone() else {
        return Ok(None);
    };
    let press = press_from_value(config)
        .map_err(|e| ApiError::bad_field("press", format!("invalid press config: {e}")))?;
    check_press(FrontEnd::Serve, press.as_ref())
        .map_err(|e| ApiError::bad_field("press", e.to_string()))?;
    Ok(Some(press))
}

/// Queues the answer and answers as JSON or as a stream. A stream starts only once the
/// prompt is in the cache, so that errors found before (a prompt too long) get their status.
async fn answer(
    app: Arc<App>,
    kind: Kind,
    start: Start,
    settings: Settings,
) -> Result<Response, ApiError> {
    let mut events = app.engine.answer(openai::spec(start, &settings))?;
    let prompt_tokens = match events.recv().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(error)) => return Err(error),
        _ => return Err(ApiError::internal("the answer ended before it started")),
    };
    let ids = Ids::new(&app, kind);
    if settings.stream {
        Ok(stream(ids, events, prompt_tokens, settings.include_usage).into_response())
    } else {
        whole(ids, events, prompt_tokens).await
    }
}

/// What every object of one answer carries.
#[derive(Clone)]
struct Ids {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Ids {
    fn new(app: &App, kind: Kind) -> Self {
        let prefix = if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Self {
            kind,
            id: format!("{prefix}-{:016x}", rand::random::<u64>()),
            created: unix_now(),
            model: app.model_id.clone(),
        }
    }

    fn object(&self, choices: Value, extra: Option<(&str, Value)>, streamed: bool) -> Value {
        let object = match (self.kind, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        };
        let mut value = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some((key, extra)) = extra {
            value[key] = extra;
        }
        value
    }

    /// One choice holding `text` (a delta when streamed).
    fn choice(&self, text: Option<&str>, finish: Option<&str>, streamed: bool) -> Value {
        match (self.kind, streamed) {
            (Kind::Chat, false) => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text.unwrap_or("")},
                "logprobs": null,
                "finish_reason": finish,
            }),
            (Kind::Chat, true) => json!({
                "index": 0,
                "delta": text.map_or(json!({}), |t| json!({"content": t})),
                "logprobs": null,
                "finish_reason": finish,
            }),
            (Kind::Text, _) => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

async fn whole(
    ids: Ids,
    mut events: UnboundedReceiver<Event>,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    while let Some(event) = events.recv().await {
        match event {
            Event::Finished {
                reason,
                completion_tokens,
                text,
            } => {
                let choice = ids.choice(Some(&text), Some(reason.as_str()), false);
                let usage = usage(prompt_tokens, completion_tokens);
                return Ok(
                    Json(ids.object(json!([choice]), Some(("usage", usage)), false))
                        .into_response(),
                );
            }
            Event::Failed(error) => return Err(error),
            Event::Started { .. } | Event::Text(_) => {}
        }
    }
    Err(ApiError::internal("the answer ended without its end"))
}

/// Server-sent events: (chat: a first chunk with the role), a chunk per piece of text, one
/// with the finish reason, (the usage when asked for), `[DONE]`. A failure after the stream
/// started is sent as an `error` object (what OpenAI's clients raise) and ends it.
fn stream(
    ids: Ids,
    mut events: UnboundedReceiver<Event>,
    prompt_tokens: usize,
    include_usage: bool,
) -> Sse<UnboundedReceiverStream<Result<SseEvent, Infallible>>> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let done = sender.clone();
    let send = move |value: &Value| sender.send(Ok(SseEvent::default().data(value.to_string())));
    tokio::spawn(async move {
        if ids.kind == Kind::Chat {
            let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if send(&ids.object(first, None, true)).is_err() {
                return;
            }
        }
        let mut finished = false;
        while let Some(event) = events.recv().await {
            let value = match event {
                Event::Text(text) => {
                    ids.object(json!([ids.choice(Some(&text), None, true)]), None, true)
                }
                Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    let last = ids.object(
                        json!([ids.choice(None, Some(reason.as_str()), true)]),
                        None,
                        true,
                    );
                    let _ = send(&last);
                    if include_usage {
                        let _ = send(&ids.object(
                            json!([]),
                            Some(("usage", usage(prompt_tokens, completion_tokens))),
                            true,
                        ));
                    }
                    finished = true;
                    break;
                }
                Event::Failed(error) => {
                    let _ = send(&error.body());
                    return;
                }
                Event::Started { .. } => continue,
            };
            // The client went away: dropping `events` cancels the answer.
            if send(&value).is_err() {
                return;
            }
        }
        if !finished {
            let _ = send(&ApiError::internal("the answer ended without its end").body());
            return;
        }
        let _ = done.send(Ok(SseEvent::default().data("[DONE]")));
    });
    Sse::new(UnboundedReceiverStream::new(receiver))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
