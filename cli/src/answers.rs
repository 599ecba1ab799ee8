//! Why an answer stopped: every answer `run` and `generate` print that did not end with the
//! model's end-of-sequence token says why on stderr (the token budget, the model's position
//! limit), and a prompt that leaves fewer positions than `--max-new-tokens` is warned about
//! before answering. Answering itself is [`kvpress::hooks::run`]'s.

use anyhow::{bail, Result};
use kvpress::core::Press;
use kvpress::hooks::run::{self, Answer, RunOutput};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{LoadedModel, StopReason};

/// Why an answer of `n_tokens` tokens stopped, in words; `None` when the model ended it (EOS).
pub fn stop_note(
    reason: StopReason,
    n_tokens: usize,
    max_new_tokens: usize,
    max_positions: usize,
) -> Option<String> {
    match reason {
        StopReason::Eos => None,
        StopReason::MaxNewTokens => Some(format!(
            "the --max-new-tokens limit ({max_new_tokens}) was reached after {n_tokens} tokens \
             (raise it for a longer answer)"
        )),
        StopReason::ContextFull => Some(format!(
            "the model's position limit ({max_positions}) was reached after {n_tokens} tokens"
        )),
        StopReason::Stopped => Some(format!("a stop rule held after {n_tokens} tokens")),
    }
}

/// Checks that a prompt at `used` positions (`what` it is, in words) fits the model's
/// `max_positions`, and (with `warn`) warns on stderr when it leaves room for fewer than
/// `max_new_tokens` answer tokens.
pub fn check_room(
    what: &str,
    used: usize,
    max_new_tokens: usize,
    max_positions: usize,
    warn: bool,
) -> Result<()> {
    if used > max_positions {
        bail!("{what} takes {used} positions, more than the model's {max_positions}: shorten it");
    }
    // The last answer token is not fed back, so it needs no position of its own.
    let room = max_positions + 1 - used;
    if warn && max_new_tokens > room {
        eprintln!(
            "warning: {what} takes {used} of the model's {max_positions} positions, which \
             leaves room for {room} answer tokens, fewer than --max-new-tokens \
             ({max_new_tokens}): answers will stop at the position limit"
        );
    }
    Ok(())
}

/// What answering should check besides answering.
#[derive(Debug, Clone, Copy)]
pub struct AnswerOptions {
    /// The most tokens per answer.
    pub max_new_tokens: usize,
    /// Warn when a context and question leave less room than `max_new_tokens`.
    pub warn: bool,
}

/// Checks that every question fits after a context of `context_tokens` positions (warning, with
/// `options.warn`, when one leaves less room than `--max-new-tokens`).
fn check_questions_fit(
    loaded: &LoadedModel,
    context_tokens: usize,
    questions: &[String],
    options: AnswerOptions,
) -> Result<()> {
    let max_positions = loaded.model.config().max_position_embeddings;
    let suffix = PromptSplit::question_suffix(loaded)?;
    for question in questions {
        let question_ids = loaded
            .tokenizer
            .encode(&format!("{question}{suffix}"), false)?;
        let what = format!(
            "the context ({context_tokens} tokens) with the question {question:?} ({} tokens)",
            question_ids.len()
        );
        check_room(
            &what,
            context_tokens + question_ids.len(),
            options.max_new_tokens,
            max_positions,
            options.warn,
        )?;
    }
    Ok(())
}

/// Answers every question greedily from `session`'s context
/// ([`kvpress::hooks::run::answer_all`]) after checking that each fits the model's positions.
pub fn answer_all(
    loaded: &LoadedModel,
    session: &mut ContextSession,
    questions: &[String],
    options: AnswerOptions,
) -> Result<Vec<Answer>> {
    let context_tokens = session.cache().seen_tokens();
    check_questions_fit(loaded, context_tokens, questions, options)?;
    Ok(run::answer_all(
        loaded,
        session,
        questions,
        options.max_new_tokens,
    )?)
}

/// Compresses `context` with `press` and answers every question (as [`kvpress::hooks::run::run`])
/// after checking that the context and each question fit the model's positions.
pub fn run_context(
    loaded: &LoadedModel,
    context: &str,
    questions: &[String],
    press: &dyn Press,
    options: AnswerOptions,
) -> Result<RunOutput> {
    run::check_inputs(context, questions)?;
    let max_positions = loaded.model.config().max_position_embeddings;
    if press.describe().needs_question {
        // Each question is prefilled with the context; what follows it in the chat template
        // is fed after the compressed length (re-rotated keys) or after the prefill.
        for question in questions {
            let (split, _) =
                PromptSplit::new(loaded, context, question)?.question_in_context(loaded)?;
            let prefill = split.context_ids.len();
            let what = format!("the context with the question {question:?} ({prefill} tokens)");
            check_room(&what, prefill, 0, max_positions, false)?;
            let context_positions = if press.describe().rerotates_keys {
                kvpress::core::press::n_kept(prefill, press.compression_ratio())
            } else {
                prefill
            };
            let used = context_positions + split.question_ids.len();
            check_room(
                &what,
                used,
                options.max_new_tokens,
                max_positions,
                options.warn,
            )?;
        }
        return Ok(run::run_per_question(
            loaded,
            context,
            questions,
            press,
            options.max_new_tokens,
        )?);
    }
    let context_ids = PromptSplit::context_ids(loaded, context)?;
    let what = format!("the context ({} tokens)", context_ids.len());
    check_room(&what, context_ids.len(), 0, max_positions, false)?;
    // Questions start after the context; with re-rotated keys, after its compressed length,
    // known once it is compressed. answer_all checks them (and warns) against the compressed
    // context; this is the same check before compressing, where it can be made.
    if !press.describe().rerotates_keys {
        let quiet = AnswerOptions {
            warn: false,
            ..options
        };
        check_questions_fit(loaded, context_ids.len(), questions, quiet)?;
    }
    let (mut session, report) = ContextSession::compress(&loaded.model, &context_ids, press, &[])?;
    let answers = answer_all(loaded, &mut session, questions, options)?;
    Ok(RunOutput {
        report,
        answers,
        compresses_while_decoding: press.describe().compresses_while_decoding,
    })
}

/// Says on stderr why each answer that did not end with EOS stopped; `label` names the cache
/// (`full cache`) when several answer the same questions.
pub fn report_stops(
    loaded: &LoadedModel,
    answers: &[Answer],
    max_new_tokens: usize,
    label: Option<&str>,
) {
    let max_positions = loaded.model.config().max_position_embeddings;
    for (i, answer) in answers.iter().enumerate() {
        let reason = answer.stop_reason;
        let Some(why) = stop_note(reason, answer.n_tokens, max_new_tokens, max_positions) else {
            continue;
        };
        let which = match (answers.len(), label) {
            (1, None) => String::new(),
            (1, Some(label)) => format!(" ({label})"),
            (_, None) => format!(" {}", i + 1),
            (_, Some(label)) => format!(" {} ({label})", i + 1),
        };
        eprintln!("answer{which} stopped: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_but_eos_is_explained() {
        assert_eq!(stop_note(StopReason::Eos, 3, 64, 8192), None);
        let note = stop_note(StopReason::ContextFull, 6, 300, 8192).unwrap();
        assert_eq!(
            note,
            "the model's position limit (8192) was reached after 6 tokens"
        );
        let note = stop_note(StopReason::MaxNewTokens, 64, 64, 8192).unwrap();
        assert!(note.contains("--max-new-tokens limit (64)"), "{note}");
        assert!(stop_note(StopReason::Stopped, 1, 64, 8192).is_some());
    }

    #[test]
    fn prompts_beyond_the_positions_are_refused() {
        assert!(check_room("the prompt", 8192, 1, 8192, true).is_ok());
        let error = check_room("the prompt", 8193, 1, 8192, true).unwrap_err();
        assert!(
            error.to_string().contains("more than the model's 8192"),
            "{error}"
        );
    }
}
