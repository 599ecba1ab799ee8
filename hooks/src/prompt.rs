//! Splitting a chat prompt into context and question tokens, as kvpress's pipeline does.

use kvpress_models::{ChatMessage, LoadedModel};

use crate::{Error, Result};

/// A prompt split into the part that is compressed (the context, chat-templated) and the part
/// asked afterwards (the question plus the end of the user turn and the assistant header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSplit {
    /// Text of the context part (system prompt, user header, context).
    pub context_text: String,
    /// Text of the question part.
    pub question_text: String,
    /// Token ids of the context part.
    pub context_ids: Vec<u32>,
    /// Token ids of the question part.
    pub question_ids: Vec<u32>,
}

impl PromptSplit {
    /// Renders the user message `context + separator` with the model's chat template (generation
    /// prompt added), cuts it at the separator, and appends what follows the separator to the
    /// question. Context and question are tokenized separately. Without a chat template the
    /// context and question are used as they are.
    pub fn new(model: &LoadedModel, context: &str, question: &str) -> Result<Self> {
        let (context_text, suffix) = Self::render(model, context)?;
        let question_text = format!("{question}{suffix}");
        let context_ids = model
            .tokenizer
            .encode(&context_text, model.chat_template.is_none())?;
        let question_ids = model.tokenizer.encode(&question_text, false)?;
        if question_ids.is_empty() {
            return Err(Error::InvalidInput("empty question".into()));
        }
        Ok(Self {
            context_text,
            question_text,
            context_ids,
            question_ids,
        })
    }

    /// This split as a press that compresses the context for its question needs it
    /// ([`kvpress_core::press::PressDescription::needs_question`], Finch), the way kvpress's
    /// evaluation builds it: the question, tokenized on its own (kvpress puts a delimiter token
    /// before it), joins the context part, and only the chat template's end of turn and
    /// assistant header are asked afterwards. Returns that split and the question's token count
    /// (the last tokens of its context part).
    pub fn question_in_context(&self, model: &LoadedModel) -> Result<(Self, usize)> {
        let suffix = Self::question_suffix(model)?;
        let question = self
            .question_text
            .strip_suffix(suffix.as_str())
            .ok_or_else(|| {
                Error::InvalidInput("the question part does not end with the chat suffix".into())
            })?;
        let question_only = model.tokenizer.encode(question, false)?;
        if question_only.is_empty() {
            return Err(Error::InvalidInput("empty question".into()));
        }
        let question_ids = model.tokenizer.encode(&suffix, false)?;
        if question_ids.is_empty() {
            return Err(Error::InvalidInput(
                "a press that compresses for the question (finch) answers from what follows the \
                 question in the chat template (end of turn, assistant header), and this model \
                 has no chat template"
                    .into(),
            ));
        }
        let mut context_ids = self.context_ids.clone();
        context_ids.extend_from_slice(&question_only);
        let split = Self {
            context_text: format!("{}{question}", self.context_text),
            question_text: suffix,
            context_ids,
            question_ids,
        };
        Ok((split, question_only.len()))
    }

    /// Token ids of the context part alone (it does not depend on the question).
    pub fn context_ids(model: &LoadedModel, context: &str) -> Result<Vec<u32>> {
        let (context_text, _) = Self::render(model, context)?;
        Ok(model
            .tokenizer
            .encode(&context_text, model.chat_template.is_none())?)
    }

    /// What follows the question in the question part: the end of the user turn and the
    /// assistant header (empty without a chat template). It does not depend on the context.
    pub fn question_suffix(model: &LoadedModel) -> Result<String> {
        Ok(Self::render(model, "context")?.1)
    }

    /// The chat-templated prompt of `context` cut at the separator: the context part and what
    /// follows the user message.
    fn render(model: &LoadedModel, context: &str) -> Result<(String, String)> {
        if context.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the context is empty (or only spaces and line breaks): give the text to compress"
                    .into(),
            ));
        }
        match &model.chat_template {
            Some(template) => {
                let separator = "#".repeat(context.len() + 10);
                let text =
                    template.render(&[ChatMessage::user(format!("{context}{separator}"))], true)?;
                let (before, after) = text.split_once(&separator).ok_or_else(|| {
                    Error::InvalidInput(
                        "the chat template altered the user message; cannot split it".into(),
                    )
                })?;
                Ok((before.to_string(), after.to_string()))
            }
            None => Ok((context.to_string(), String::new())),
        }
    }
}
