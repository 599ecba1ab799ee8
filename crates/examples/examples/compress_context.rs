//! Compose presses in Rust code: compress a context once with SnapKV wrapped in CriticalKV, then
//! answer two questions from the compressed cache.
//!
//! `cargo run -p examples --example compress_context`

use anyhow::Result;
use kvpress::candle::Device;
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig};
use kvpress::presses::criticalkv::CriticalKv;
use kvpress::presses::snapkv::SnapKv;

const CONTEXT: &str = include_str!("../../../data/needle-haystack.txt");

fn main() -> Result<()> {
    let loaded = load_model(&kvpress::default_model::require()?, None, &Device::Cpu)?;
    let press = CriticalKv {
        inner: Box::new(SnapKv {
            compression_ratio: 0.5,
            ..SnapKv::default()
        }),
        epsilon: 1e-4,
        first_stage_ratio: 0.5,
    };
    let questions = [
        "What is the special magic number for ocean mentioned in the provided text?",
        "What color is the sky in the provided text?",
    ];
    let context_ids = PromptSplit::new(&loaded, CONTEXT, questions[0])?.context_ids;
    let (mut session, report) = ContextSession::compress(&loaded.model, &context_ids, &press, &[])?;
    println!(
        "kept {:.0}% of the cache: {} -> {} bytes",
        100.0 * report.kept_fraction(),
        report.kv_bytes_full,
        report.kv_bytes
    );
    for question in questions {
        let split = PromptSplit::new(&loaded, CONTEXT, question)?;
        let answer = session.answer(
            &loaded.model,
            &split.question_ids,
            loaded.tokenizer.eos_ids(),
            &GenerationConfig::default(),
            &mut |_| Ok(()),
        )?;
        println!(
            "{question}\n  {}",
            loaded.tokenizer.decode(&answer.tokens, true)?
        );
    }
    Ok(())
}
