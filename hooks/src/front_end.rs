//! The front ends that run presses, and the one check each makes before it starts: a press
//! either does on that path everything its description says ([`Press::describe`]) or is refused
//! up front with an error naming the press, the front end and why.

use kvpress_core::press::{CacheLayout, Press, RatioControl};

use crate::{Error, Result};

/// A way the runtime runs a press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// Compress a context, then answer questions from it (`kvpress run`, the `Pipeline`).
    Run,
    /// Compress a context and save it (`kvpress compress`); answers from the file run the
    /// press's decode-time schedule like [`FrontEnd::Run`].
    Compress,
    /// Generate from a prompt (`kvpress generate`).
    Generate,
    /// The evaluation grid (`kvpress eval`): one recorded prefill compressed at every ratio of
    /// the grid, answers decoded in batches.
    Eval,
    /// KL divergence and agreement of a compressed cache over a teacher-forced continuation.
    Fidelity,
    /// Pictures of what the prefill compression kept (`kvpress inspect`).
    Inspect,
    /// The parity trace of the prefill compression (`kvpress trace`).
    Trace,
    /// Decode speed from a compressed context (`kvpress bench --press`).
    Bench,
    /// The server (`kvpress serve`): contexts compressed once, answers decoded in batches
    /// without presses.
    Serve,
}

impl FrontEnd {
    /// The command-line name of this front end.
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Compress => "compress",
            Self::Generate => "generate",
            Self::Eval => "eval",
            Self::Fidelity => "fidelity",
            Self::Inspect => "inspect",
            Self::Trace => "trace",
            Self::Bench => "bench",
            Self::Serve => "serve",
        }
    }

    /// Whether this front end decodes with the press's decode-time schedule.
    fn runs_decoding_schedule(self) -> bool {
        matches!(self, Self::Run | Self::Compress | Self::Generate)
    }
}

/// Checks that `front_end` can run `press` as its description says; the error names the press,
/// the front end, the reason and what to use instead.
pub fn check_press(front_end: FrontEnd, press: &dyn Press) -> Result<()> {
    press.validate()?;
    kvpress_core::press::check_nesting(press)?;
    let reason = match kvpress_core::press::press_name(press).as_str() {
        "no_press" if front_end == FrontEnd::Eval => Some(
            "it never compresses, and the grid already answers every question from the full \
             cache (its `full cache` rows)"
                .to_string(),
        ),
        _ => refusal(front_end, press),
    };
    if let Some(reason) = reason {
        return Err(Error::PressNotSupported {
            press: kvpress_core::press::press_name(press),
            front_end: front_end.name(),
            reason,
        });
    }
    Ok(())
}

fn refusal(front_end: FrontEnd, press: &dyn Press) -> Option<String> {
    if press.reconstruction().is_some() && front_end == FrontEnd::Generate {
        return Some(
            "it scores the context by reconstructing it in a second forward pass after the \
             prefill, which `generate` does not run (it compresses the prompt while it is \
             prefilled); use run, compress, eval, trace, inspect, fidelity, bench or serve"
                .to_string(),
        );
    }
    let description = &press.describe();
    let question_aware = matches!(front_end, FrontEnd::Run | FrontEnd::Trace | FrontEnd::Bench);
    if description.needs_question && !question_aware {
        return Some(format!(
            "it compresses the context for the question asked of it (the question is prefilled \
             with the context), and `{}` compresses a context without its question; use it with \
             `kvpress run` (each question compresses the context anew), `trace` or `bench`",
            front_end.name()
        ));
    }
    if description.cache_layout == CacheLayout::ChannelPruned
        && (matches!(front_end, FrontEnd::Compress | FrontEnd::Serve)
            || description.compresses_while_decoding)
    {
        return Some(
            "its cache stores only some key channels of the context, which has no saved-file \
             layout and cannot be compressed again while decoding; compress and answer in one \
             run (`kvpress run`)"
                .to_string(),
        );
    }
    if description.compresses_while_decoding && !front_end.runs_decoding_schedule() {
        return Some(format!(
            "it compresses while tokens are generated, and `{}` only compresses the prefill \
             (it would report the full cache as compressed); use it with run, compress or \
             generate",
            front_end.name()
        ));
    }
    if front_end == FrontEnd::Eval && description.ratio == RatioControl::OwnedByPress {
        return Some(
            "it sets its own compression ratios (a wrapper's per-layer or per-press ratios, or \
             a ratio that is the outcome of the method, as simlayerkv's lazy layers or think's \
             pruned channels), and the evaluation grid runs every press at the grid's ratios; \
             grid the presses a wrapper holds instead, or compare such a press with `kvpress \
             run` or `fidelity`"
                .to_string(),
        );
    }
    None
}
