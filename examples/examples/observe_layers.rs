//! A custom hook: during the context's prefill, print what each layer exposes and keep only the
//! first tokens (attention sinks) and the most recent ones of its cache, a hand-written
//! StreamingLLM, then answer from the shortened cache. Positions keep counting the original tokens.

use anyhow::Result;
use kvpress::candle::Device;
use kvpress::core::{AttentionHook, ForwardPhase, LayerContext};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig};

/// Keeps the first `sinks` and the last `recent` tokens of every layer after prefill.
struct SinksAndRecent {
    sinks: usize,
    recent: usize,
}

impl AttentionHook for SinksAndRecent {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress::core::Result<()> {
        if context.phase != ForwardPhase::Prefill {
            return Ok(());
        }
        if context.layer_idx == 0 {
            println!(
                "layer 0: hidden {:?}, queries {:?}, keys {:?}, W_o {:?}",
                context.hidden_states.dims(),
                context.queries.dims(),
                context.keys.dims(),
                context.projections.output_weight()?.dims()
            );
        }
        if let Some((keys, values)) = context.cache.keys_values()? {
            let len = keys.dim(2)?;
            if len > self.sinks + self.recent {
                let keep = |t: &kvpress::candle::Tensor| -> kvpress::candle::Result<kvpress::candle::Tensor> {
                    kvpress::candle::Tensor::cat(&[t.narrow(2, 0, self.sinks)?, t.narrow(2, len - self.recent, self.recent)?], 2)
                };
                context.cache.replace(&keep(&keys)?, &keep(&values)?)?;
            }
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let loaded = load_model(&kvpress::default_model::require()?, None, &Device::Cpu)?;
    let context = "Nothing else matters here. ".repeat(60) + "The secret code is 4711.";
    let split = PromptSplit::new(&loaded, &context, " What is the secret code?")?;
    let mut session = ContextSession::prefill(
        &loaded.model,
        &split.context_ids,
        Some(&mut SinksAndRecent {
            sinks: 4,
            recent: 124,
        }),
    )?;
    println!(
        "context: {} tokens, cache: {:?} tokens per layer, {} bytes",
        split.context_ids.len(),
        session.cache().lengths().first(),
        session.cache().bytes_used()
    );
    let answer = session.answer(
        &loaded.model,
        &split.question_ids,
        loaded.tokenizer.eos_ids(),
        &GenerationConfig {
            max_new_tokens: 32,
            ..Default::default()
        },
        &mut |_| Ok(()),
    )?;
    println!("answer: {}", loaded.tokenizer.decode(&answer.tokens, true)?);
    Ok(())
}
