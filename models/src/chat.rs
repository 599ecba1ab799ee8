//! Chat templates, rendered with a Jinja engine from the model's own template, with the
//! whitespace rules transformers uses (`trim_blocks`, `lstrip_blocks`).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A model's chat template (Jinja source) with the special tokens it may reference.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Parses `source`, failing early on syntax errors.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let template = Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        template.environment()?;
        Ok(template)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        // transformers renders with `trim_blocks=True, lstrip_blocks=True`: the newline after a
        // block tag and the spaces before one are dropped.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| Error::ChatTemplate(format!("cannot parse: {e}")))?;
        Ok(env)
    }

    /// Renders `messages`; with `add_generation_prompt` the assistant header follows.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| Error::ChatTemplate(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let template = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let text = template.render(&[ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let template = ChatTemplate::new(
            "{% if messages[0].role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}{{ messages[0].content.strip() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            template
                .render(&[ChatMessage::user("  x  ")], false)
                .unwrap(),
            "x"
        );
        let bad = ChatMessage {
            role: "bad".into(),
            content: String::new(),
        };
        let err = template.render(&[bad], false).unwrap_err().to_string();
        assert!(err.contains("no bad roles"), "{err}");
    }

    #[test]
    fn block_tags_trim_like_transformers() {
        // jinja2 with trim_blocks and lstrip_blocks (transformers' settings) renders "[Hi][Yo]".
        let source = "{% for m in messages %}\n    {% if true %}[{{ m.content }}]{% endif %}\n{% endfor %}\n";
        let template = ChatTemplate::new(source, "", "").unwrap();
        let messages = [ChatMessage::user("Hi"), ChatMessage::user("Yo")];
        assert_eq!(template.render(&messages, false).unwrap(), "[Hi][Yo]");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
