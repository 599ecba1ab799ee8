//! Compose presses in Rust code: compress a context once with SnapKV wrapped in CriticalKV, then
//! answer two questions from the compressed cache, the second one streamed as it is generated.
//!
//! `cargo run --release -p kvpress-examples --example compress_context`

use anyhow::Result;
use kvpress::presses::criticalkv::CriticalKv;
use kvpress::presses::snapkv::SnapKv;
use kvpress::{AnswerOptions, Pipeline};

const CONTEXT: &str = include_str!("../../data/needle-haystack.txt");

fn main() -> Result<()> {
    let pipe = Pipeline::load_default()?;
    let press = CriticalKv::new(Box::new(SnapKv {
        compression_ratio: 0.5,
        ..SnapKv::default()
    }));
    let ctx = pipe.compress(CONTEXT, &press)?;
    if let Some(report) = ctx.report() {
        println!(
            "kept {:.0}% of the cache: {} -> {} bytes",
            100.0 * report.kept_fraction(),
            report.kv_bytes_full,
            report.kv_bytes
        );
    }
    let question = "What is the special magic number for ocean mentioned in the provided text?";
    println!("{question}\n  {}", ctx.ask(question)?);

    let question = "What color is the sky in the provided text?";
    println!("{question}");
    let mut print = |piece: &str| print!("{piece}");
    let options = AnswerOptions {
        on_text: Some(&mut print),
        ..Default::default()
    };
    let answer = ctx.ask_with(question, options)?;
    println!(
        "\n  ({} tokens in {:.2} s)",
        answer.tokens.len(),
        answer.seconds
    );
    Ok(())
}
