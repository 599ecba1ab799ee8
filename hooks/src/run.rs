//! `kvpress run`: compress a context once with a press, then answer questions from it.

use std::io::Write;
use std::time::Instant;

use crate::{CompressionReport, ContextSession, Error, PromptSplit, Result};
use kvpress_core::Press;
use kvpress_models::{GenerationConfig, GenerationOutput, LoadedModel, Sampling, StopReason};

/// One answered question.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The question asked.
    pub question: String,
    /// The generated text.
    pub text: String,
    /// Seconds to answer (question prefill plus decoding).
    pub seconds: f64,
    /// Generated tokens.
    pub n_tokens: usize,
    /// Why the answer ended (EOS, the token budget, the model's position limit).
    pub stop_reason: StopReason,
    /// Layer compressions decode-time compression made while this answer was generated (0
    /// when the press does not compress while decoding, or the question's forward and one
    /// forward per generated token were fewer than its `compression_interval`).
    pub decode_compressions: usize,
    /// The compression made for this question alone, for a press that compresses the context
    /// for its question (Finch; [`run_per_question`]); `None` when every question shares one
    /// compressed context.
    pub compression: Option<CompressionReport>,
}

/// What `kvpress run` did.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The compression of the context (for a press that compresses for each question, that of
    /// the first question; each answer carries its own).
    pub report: CompressionReport,
    /// One answer per question, in order.
    pub answers: Vec<Answer>,
    /// Whether the press compresses while answers are generated (then each answer says how
    /// often it did).
    pub compresses_while_decoding: bool,
}

/// Compresses `context` with `press` (or keeps the full cache) and answers every question
/// greedily with at most `max_new_tokens` tokens.
pub fn run(
    model: &LoadedModel,
    context: &str,
    questions: &[String],
    press: &dyn Press,
    max_new_tokens: usize,
) -> Result<RunOutput> {
    check_inputs(context, questions)?;
    if press.describe().needs_question {
        return run_per_question(model, context, questions, press, max_new_tokens);
    }
    let context_ids = PromptSplit::context_ids(model, context)?;
    let (mut session, report) = ContextSession::compress(&model.model, &context_ids, press, &[])?;
    let answers = answer_all(model, &mut session, questions, max_new_tokens)?;
    Ok(RunOutput {
        report,
        answers,
        compresses_while_decoding: press.describe().compresses_while_decoding,
    })
}

/// [`run`] for a press that compresses the context for its question (Finch): each question is
/// prefilled with the context ([`PromptSplit::question_in_context`]), the press compresses
/// both, and the answer comes from what follows the question in the chat template. Every
/// question costs a prefill of the context.
pub fn run_per_question(
    model: &LoadedModel,
    context: &str,
    questions: &[String],
    press: &dyn Press,
    max_new_tokens: usize,
) -> Result<RunOutput> {
    check_inputs(context, questions)?;
    let config = greedy(max_new_tokens);
    let mut answers = Vec::with_capacity(questions.len());
    for question in questions {
        let (split, question_tokens) =
            PromptSplit::new(model, context, question)?.question_in_context(model)?;
        let (mut session, report) = ContextSession::compress_with_question(
            &model.model,
            &split.context_ids,
            question_tokens,
            press,
            &[],
        )?;
        let start = Instant::now();
        let output = session.answer(
            &model.model,
            &split.question_ids,
            model.tokenizer.eos_ids(),
            &config,
            &mut |_| Ok(()),
        )?;
        let answer = answer_record(model, &session, question, output, start)?;
        answers.push(Answer {
            compression: Some(report),
            ..answer
        });
    }
    let report = answers[0]
        .compression
        .clone()
        .ok_or_else(|| Error::InvalidInput("no question".to_string()))?;
    Ok(RunOutput {
        report,
        answers,
        compresses_while_decoding: press.describe().compresses_while_decoding,
    })
}

/// Refuses what [`run`] cannot answer: no question, an empty question or an empty context.
pub fn check_inputs(context: &str, questions: &[String]) -> Result<()> {
    check_questions(questions)?;
    if context.trim().is_empty() {
        return Err(Error::InvalidInput("the context is empty".to_string()));
    }
    Ok(())
}

/// Refuses no question or an empty one.
fn check_questions(questions: &[String]) -> Result<()> {
    if questions.is_empty() {
        return Err(Error::InvalidInput(
            "no question: pass --question at least once".to_string(),
        ));
    }
    if questions.iter().any(|q| q.trim().is_empty()) {
        return Err(Error::InvalidInput(
            "a question is empty: give the question to answer".to_string(),
        ));
    }
    Ok(())
}

/// Answers every question greedily from `session`'s context (rewound after each).
pub fn answer_all(
    model: &LoadedModel,
    session: &mut ContextSession,
    questions: &[String],
    max_new_tokens: usize,
) -> Result<Vec<Answer>> {
    check_questions(questions)?;
    let config = greedy(max_new_tokens);
    let mut answers = Vec::with_capacity(questions.len());
    for question in questions {
        let start = Instant::now();
        let output =
            crate::pipeline::answer_question(model, session, question, &config, &mut |_| Ok(()))?;
        answers.push(answer_record(model, session, question, output, start)?);
    }
    Ok(answers)
}

/// Greedy generation of at most `max_new_tokens` tokens.
fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
    }
}

/// The [`Answer`] to `question` that `session` generated as `output`, timed from `start`
/// (without a compression of its own).
fn answer_record(
    model: &LoadedModel,
    session: &ContextSession,
    question: &str,
    output: GenerationOutput,
    start: Instant,
) -> Result<Answer> {
    Ok(Answer {
        question: question.to_string(),
        text: model.tokenizer.decode(&output.tokens, true)?,
        seconds: start.elapsed().as_secs_f64(),
        n_tokens: output.tokens.len(),
        stop_reason: output.stop_reason,
        decode_compressions: session.last_answer_compressions(),
        compression: None,
    })
}

/// Prints the answers of the full cache and of the compressed one side by side, with the memory
/// each cache takes and the answering speed.
pub fn print_comparison(
    full: &RunOutput,
    compressed: &RunOutput,
    press_name: &str,
    mut out: impl Write,
) -> std::io::Result<()> {
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let ms_per_token = |a: &Answer| 1e3 * a.seconds / a.n_tokens.max(1) as f64;
    for (f, c) in full.answers.iter().zip(&compressed.answers) {
        writeln!(out, "Q: {}", f.question)?;
        writeln!(
            out,
            "  full cache   ({:7.2} MiB, {:5.1} ms/token): {}",
            mib(full.report.kv_bytes),
            ms_per_token(f),
            f.text.trim()
        )?;
        let report = c.compression.as_ref().unwrap_or(&compressed.report);
        writeln!(
            out,
            "  {press_name:<12} ({:7.2} MiB, {:5.1} ms/token): {}",
            mib(report.kv_bytes),
            ms_per_token(c),
            c.text.trim()
        )?;
        if compressed.compresses_while_decoding {
            writeln!(out, "  {}", decode_time_note(c))?;
        }
        if let Some(report) = &c.compression {
            writeln!(out, "  {}", question_compression_note(report))?;
        }
    }
    if compressed.answers.iter().any(|a| a.compression.is_some()) {
        return Ok(());
    }
    let saved = 1.0 - compressed.report.kv_bytes as f64 / full.report.kv_bytes.max(1) as f64;
    writeln!(
        out,
        "context: {} tokens | {press_name} keeps {:.1}% of the cache: {:.2} MiB -> {:.2} MiB ({:.1}% saved) | compression {:.3} s after a {:.2} s prefill",
        compressed.report.context_tokens,
        100.0 * compressed.report.kept_fraction(),
        mib(full.report.kv_bytes),
        mib(compressed.report.kv_bytes),
        100.0 * saved,
        compressed.report.compression_seconds,
        compressed.report.prefill_seconds - compressed.report.compression_seconds,
    )
}

/// What a compression made for one question did (a press that compresses for the question).
pub fn question_compression_note(report: &CompressionReport) -> String {
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    format!(
        "compressed for this question: {} tokens (context and question) | kept {:.1}% | KV cache \
         {:.2} MiB -> {:.2} MiB | prefill {:.2} s, of which compression {:.3} s",
        report.context_tokens,
        100.0 * report.kept_fraction(),
        mib(report.kv_bytes_full),
        mib(report.kv_bytes),
        report.prefill_seconds,
        report.compression_seconds
    )
}

/// What decode-time compression did during one answer.
pub fn decode_time_note(answer: &Answer) -> String {
    decode_compressions_note(answer.decode_compressions)
}

/// What decode-time compression did during a generation that compressed `n` times (layers x
/// steps).
pub fn decode_compressions_note(n: usize) -> String {
    match n {
        0 => "decode-time compression did not run: the question's forward and one forward per \
              generated token were fewer than the press's compression_interval (kvpress counts \
              forwards the same way)"
            .to_string(),
        n => format!("decode-time compression ran {n} times (layers x steps) during this answer"),
    }
}

/// Prints the answers and a summary of the compression.
pub fn print(output: &RunOutput, mut out: impl Write) -> std::io::Result<()> {
    for answer in &output.answers {
        writeln!(out, "Q: {}", answer.question)?;
        writeln!(out, "A: {}", answer.text.trim())?;
        writeln!(
            out,
            "   ({} tokens in {:.2} s)",
            answer.n_tokens, answer.seconds
        )?;
        if output.compresses_while_decoding {
            writeln!(out, "   {}", decode_time_note(answer))?;
        }
        if let Some(report) = &answer.compression {
            writeln!(out, "   {}", question_compression_note(report))?;
        }
    }
    if output.answers.iter().any(|a| a.compression.is_some()) {
        return Ok(());
    }
    let report = &output.report;
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "context: {} tokens | kept {:.1}% | KV cache {:.2} MiB -> {:.2} MiB ({} -> {} bytes)",
        report.context_tokens,
        100.0 * report.kept_fraction(),
        mib(report.kv_bytes_full),
        mib(report.kv_bytes),
        report.kv_bytes_full,
        report.kv_bytes
    )?;
    writeln!(
        out,
        "prefill {:.2} s, of which compression {:.3} s ({:.1}%)",
        report.prefill_seconds,
        report.compression_seconds,
        100.0 * report.compression_seconds / report.prefill_seconds.max(1e-9)
    )
}
