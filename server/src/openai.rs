//! OpenAI's request bodies (the fields this server takes; an unknown field is refused by
//! name) and how a request becomes an answer ([`AnswerSpec`]).

use kvpress::models::{ChatMessage, LoadedModel, Sampling};
use serde::Deserialize;

use crate::engine::{AnswerSpec, Start};
use crate::error::ApiError;

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// A message's content: text, or parts of which only `text` ones are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// The part's type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its text.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of a chat.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: Content,
    /// A participant's name (accepted, not used).
    #[serde(default)]
    pub name: Option<String>,
}

/// The settings chat and text completions share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The same, under its newer name.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature in `[0, 2]`; 0 is greedy. OpenAI's default, 1, when absent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass in `(0, 1]`.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Seed of the sampler (a random one when absent).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Number of answers; only 1.
    #[serde(default)]
    pub n: Option<u64>,
    /// An end user's id (accepted, not used).
    #[serde(default)]
    pub user: Option<String>,
    /// A stored context to answer from (`POST /v1/contexts`).
    #[serde(default)]
    pub context_id: Option<String>,
    /// A press to compress this request's context with (chat completions).
    #[serde(default)]
    pub press: Option<serde_json::Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Everything else.
    #[serde(flatten)]
    pub generation: Generation,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// The model's id.
    pub model: String,
    /// The prompt: one string (or a list holding one).
    pub prompt: Prompt,
    /// Everything else.
    #[serde(flatten)]
    pub generation: Generation,
}

/// A text completion's prompt.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// Several (only one is supported).
    Many(Vec<String>),
}

/// `POST /v1/contexts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextRequest {
    /// The text to compress (as the chat template's user turn).
    pub text: String,
    /// The press config (the JSON form of `configs/presses`).
    pub press: serde_json::Value,
}

/// Parses a JSON body into `T`, refusing malformed JSON, wrong types and unknown fields with
/// a 400 that says which.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not match the request's schema"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// How a request is answered, apart from where its cache comes from.
pub struct Settings {
    /// Sampling.
    pub sampling: Sampling,
    /// Token budget.
    pub max_tokens: usize,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Add a usage chunk to the stream.
    pub include_usage: bool,
}

/// Checks the settings of `generation` against what the server takes.
pub fn settings(generation: &Generation, max_tokens_limit: usize) -> Result<Settings, ApiError> {
    if let Some(n) = generation.n {
        if n != 1 {
            return Err(ApiError::bad_field(
                "n",
                format!("n = {n}: only one answer per request (n = 1) is supported"),
            ));
        }
    }
    let max_tokens = match (generation.max_tokens, generation.max_completion_tokens) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "max_tokens",
                "give max_tokens or max_completion_tokens, not both",
            ))
        }
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => 256.min(max_tokens_limit as u64),
    };
    if max_tokens == 0 || max_tokens > max_tokens_limit as u64 {
        return Err(ApiError::bad_field(
            "max_tokens",
            format!("max_tokens = {max_tokens}: it must be in 1..={max_tokens_limit} (the server's --max-tokens-limit)"),
        ));
    }
    let temperature = generation.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_field(
            "temperature",
            format!("temperature = {temperature}: it must be in [0, 2]"),
        ));
    }
    let top_p = generation.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_field(
            "top_p",
            format!("top_p = {top_p}: it must be in (0, 1]"),
        ));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature,
            top_p,
            seed: generation.seed.map_or_else(rand::random, |s| s as u64),
        }
    };
    let stop = match &generation.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_field(
            "stop",
            "stop takes at most 4 non-empty sequences",
        ));
    }
    let include_usage = match &generation.stream_options {
        Some(_) if !generation.stream => {
            return Err(ApiError::bad_field(
                "stream_options",
                "stream_options needs stream = true",
            ))
        }
        Some(options) => options.include_usage,
        None => false,
    };
    Ok(Settings {
        sampling,
        max_tokens: max_tokens as usize,
        stop,
        stream: generation.stream,
        include_usage,
    })
}

/// The text of a message (its text parts joined).
pub fn message_text(message: &Message) -> Result<String, ApiError> {
    match &message.content {
        Content::Text(text) => Ok(text.clone()),
        Content::Parts(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_field(
                            "messages",
                            format!("a content part of type `{kind}`: only `text` parts (with their `text`) are supported"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Where a chat's cache comes from:
/// - with `context_id`: the stored context answers the last message, which must be the
///   conversation's only message and a user one;
/// - with `press`: every message before the last is the context (their texts joined by blank
///   lines), compressed with the press; the last message, a user one, is the question;
/// - otherwise the whole conversation, through the model's chat template, with a full cache.
pub fn chat_start(
    model: &LoadedModel,
    request: &ChatRequest,
    context: Option<std::sync::Arc<crate::contexts::StoredContext>>,
    press: Option<Box<dyn kvpress::core::press::Press>>,
) -> Result<Start, ApiError> {
    let messages = &request.messages;
    let Some(last) = messages.last() else {
        return Err(ApiError::bad_field("messages", "messages is empty"));
    };
    for message in messages {
        if !matches!(
            message.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::bad_field(
                "messages",
                format!(
                    "a message with role `{}`: valid roles are system, developer, user, assistant",
                    message.role
                ),
            ));
        }
    }
    if (context.is_some() || press.is_some()) && last.role != "user" {
        return Err(ApiError::bad_field(
            "messages",
            "the last message must be the user's question",
        ));
    }
    let question = message_text(last)?;
    if let Some(context) = context {
        if messages.len() != 1 {
            return Err(ApiError::bad_field(
                "messages",
                "with context_id the conversation is one user message, the question asked of \
                 the stored context (earlier turns are not part of a stored context)",
            ));
        }
        return Ok(Start::Context { context, question });
    }
    if let Some(press) = press {
        let parts = messages[..messages.len() - 1]
            .iter()
            .map(message_text)
            .collect::<Result<Vec<_>, _>>()?;
        let context = parts.join("\n\n");
        if context.trim().is_empty() {
            return Err(ApiError::bad_field(
                "messages",
                "with press, the messages before the last are the context to compress, and there \
                 are none (or they are empty)",
            ));
        }
        return Ok(Start::Press {
            context,
            press,
            question,
        });
    }
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "the model has no chat template: use /v1/completions with a raw prompt",
        )
    })?;
    let chat = messages
        .iter()
        .map(|m| {
            Ok(ChatMessage {
                role: if m.role == "developer" {
                    "system".to_string()
                } else {
                    m.role.clone()
                },
                content: message_text(m)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = template.render(&chat, true).map_err(|e| {
        ApiError::bad_field(
            "messages",
            format!("the chat template refused the conversation: {e}"),
        )
    })?;
    let ids = model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Start::Prompt { ids })
}

/// The answer a request describes.
pub fn spec(start: Start, settings: &Settings) -> AnswerSpec {
    AnswerSpec {
        start,
        sampling: settings.sampling,
        max_tokens: settings.max_tokens,
        stop: settings.stop.clone(),
    }
}
