//! The token ids a context-reconstruction pass feeds after a context (KVzip), made once from
//! the model's tokenizer and chat template when the model is loaded, exactly as kvpress 0.5.5's
//! `KVzipPress` makes them: so that the runtime, which holds the model but not its tokenizer,
//! can run the pass.

use crate::{ChatMessage, ChatTemplate, Result, TextTokenizer};

/// KVzip's prompt before the first chunk of the context.
pub const REPEAT_FIRST: &str = "\n\nRepeat the previous context exactly.";
/// KVzip's prompt before every further chunk (followed by the previous chunk's last tokens).
pub const REPEAT_NEXT: &str = "\n\nRepeat the part of the previous context exactly, starting with";

/// Token ids of the reconstruction prompts of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconstructionPrompt {
    /// Tokens of a chat-templated context before the user's text (system prompt and user
    /// header), which are never reconstructed; 0 without a chat template.
    pub prefix_tokens: usize,
    /// [`REPEAT_FIRST`], tokenized without special tokens.
    pub first: Vec<u32>,
    /// [`REPEAT_NEXT`], tokenized without special tokens.
    pub next: Vec<u32>,
    /// What follows a user message: the end of the turn and the assistant header (`"\n"`
    /// without a chat template).
    pub suffix: Vec<u32>,
}

impl ReconstructionPrompt {
    /// The prompts of a model with `tokenizer` and `template`: the template renders the user
    /// message `"dummy context" + separator`, the text before `"dummy context"` is the prefix,
    /// the text after the separator the suffix (kvpress's recipe). An error when the template
    /// alters the message (the loaders then leave the model without these prompts).
    pub fn new(tokenizer: &TextTokenizer, template: Option<&ChatTemplate>) -> Result<Self> {
        let (prefix, suffix) = match template {
            Some(template) => {
                let dummy = "dummy context";
                let separator = format!("\n{}", "#".repeat(dummy.len()));
                let text =
                    template.render(&[ChatMessage::user(format!("{dummy}{separator}"))], true)?;
                let (context, suffix) = text.split_once(&separator).ok_or_else(|| {
                    crate::Error::InvalidInput(
                        "the chat template altered the user message; the reconstruction \
                         prompts cannot be made"
                            .to_string(),
                    )
                })?;
                let prefix = context.split(dummy).next().unwrap_or_default();
                (prefix.to_string(), suffix.to_string())
            }
            None => (String::new(), "\n".to_string()),
        };
        Ok(Self {
            prefix_tokens: tokenizer.encode(&prefix, false)?.len(),
            first: tokenizer.encode(REPEAT_FIRST, false)?,
            next: tokenizer.encode(REPEAT_NEXT, false)?,
            suffix: tokenizer.encode(&suffix, false)?,
        })
    }
}
