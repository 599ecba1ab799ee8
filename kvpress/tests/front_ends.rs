//! Every front end either runs a press as its description says or refuses it up front:
//! decode-time presses compress while answers are generated in `run` (and from saved contexts),
//! are refused by the prefill-only front ends, and presses that own their ratios are refused by
//! the evaluation grid.

use kvpress::candle::Device;
use kvpress::core::press::{press_from_toml, Press, RatioControl};
use kvpress::hooks::{check_press, ContextSession, Error, FrontEnd, PromptSplit};
use kvpress::models::{load_model, GenerationConfig, LoadedModel, Sampling};

const DECODING: &str = "press = \"decoding\"\ncompression_interval = 8\ntarget_size = 48\n\
                        hidden_states_buffer_size = 8\n[inner]\npress = \"knorm\"\n";
const COMPOSED_DECODING: &str = "press = \"composed\"\n[[presses]]\npress = \"knorm\"\n\
     compression_ratio = 0.5\n[[presses]]\npress = \"decoding\"\ncompression_interval = 8\n\
     target_size = 48\nhidden_states_buffer_size = 8\n[presses.inner]\npress = \"knorm\"\n";

fn press(toml: &str) -> Box<dyn Press> {
    press_from_toml(toml).expect("a valid press config")
}

fn refused_by(front_end: FrontEnd, press: &dyn Press) -> bool {
    match check_press(front_end, press) {
        Ok(()) => false,
        Err(Error::PressNotSupported {
            front_end: named, ..
        }) => {
            assert_eq!(named, front_end.name());
            true
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[test]
fn decode_time_presses_are_refused_where_only_the_prefill_is_compressed() {
    for config in [DECODING, COMPOSED_DECODING] {
        let press = press(config);
        assert!(press.describe().compresses_while_decoding, "{config}");
        for front_end in [FrontEnd::Run, FrontEnd::Compress, FrontEnd::Generate] {
            assert!(!refused_by(front_end, press.as_ref()), "{front_end:?}");
        }
        for front_end in [
            FrontEnd::Eval,
            FrontEnd::Fidelity,
            FrontEnd::Inspect,
            FrontEnd::Trace,
            FrontEnd::Bench,
        ] {
            assert!(refused_by(front_end, press.as_ref()), "{front_end:?}");
        }
    }
}

#[test]
fn kvzip_runs_wherever_a_context_is_compressed_and_not_while_a_prompt_is_generated() {
    let kvzip = press("press = \"kvzip\"\ncompression_ratio = 0.5\n");
    for front_end in [
        FrontEnd::Run,
        FrontEnd::Compress,
        FrontEnd::Fidelity,
        FrontEnd::Inspect,
        FrontEnd::Trace,
        FrontEnd::Bench,
        FrontEnd::Serve,
        FrontEnd::Eval,
    ] {
        assert!(!refused_by(front_end, kvzip.as_ref()), "{front_end:?}");
    }
    assert!(refused_by(FrontEnd::Generate, kvzip.as_ref()));
    // Inside another press it would be asked for one layer at a time: refused by name.
    let nested = press_from_toml(
        "press = \"composed\"\n[[presses]]\npress = \"kvzip\"\ncompression_ratio = 0.5\n",
    )
    .unwrap();
    let error = check_press(FrontEnd::Run, nested.as_ref())
        .unwrap_err()
        .to_string();
    assert!(error.contains("`composed` holds `kvzip`"), "{error}");
}

#[test]
fn the_grid_refuses_presses_that_own_their_ratios() {
    let per_layer = press(
        "press = \"per_layer\"\ncompression_ratios = [0.5, 0.25]\n[inner]\npress = \"knorm\"\n",
    );
    let composed =
        press("press = \"composed\"\n[[presses]]\npress = \"knorm\"\ncompression_ratio = 0.5\n");
    for owned in [per_layer, composed] {
        assert_eq!(owned.describe().ratio, RatioControl::OwnedByPress);
        assert!(refused_by(FrontEnd::Eval, owned.as_ref()));
        assert!(!refused_by(FrontEnd::Run, owned.as_ref()));
    }
    let knorm = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
    assert!(!refused_by(FrontEnd::Eval, knorm.as_ref()));
}

#[test]
fn finch_runs_where_the_question_is_prefilled_with_the_context_and_nowhere_else() {
    let finch = press("press = \"finch\"\ncompression_ratio = 0.5\n");
    assert!(finch.describe().needs_question);
    for front_end in [FrontEnd::Run, FrontEnd::Trace, FrontEnd::Bench] {
        assert!(!refused_by(front_end, finch.as_ref()), "{front_end:?}");
    }
    for front_end in [
        FrontEnd::Compress,
        FrontEnd::Generate,
        FrontEnd::Eval,
        FrontEnd::Fidelity,
        FrontEnd::Inspect,
    ] {
        assert!(refused_by(front_end, finch.as_ref()), "{front_end:?}");
    }
    // Nested, it would score the question as context: refused by every front end.
    for wrapper in [
        "press = \"key_rerotation\"\n[inner]\npress = \"finch\"\nrerotate_keys = false\n",
        "press = \"composed\"\n[[presses]]\npress = \"finch\"\ncompression_ratio = 0.5\n",
        "press = \"per_layer\"\ncompression_ratios = [0.5]\n[inner]\npress = \"finch\"\n",
    ] {
        let nested = press(wrapper);
        let error = check_press(FrontEnd::Run, nested.as_ref()).unwrap_err();
        assert!(
            error.to_string().contains("only a press at the top"),
            "{error}"
        );
    }
}

#[test]
fn composed_refuses_two_decode_time_presses() {
    let config = "press = \"composed\"\n\
                  [[presses]]\npress = \"decoding\"\n[presses.inner]\npress = \"knorm\"\n\
                  [[presses]]\npress = \"decoding\"\n[presses.inner]\npress = \"knorm\"\n";
    let error = press_from_toml(config)
        .and_then(|p| p.validate().map(|_| p))
        .expect_err("two decode-time presses");
    assert!(error.to_string().contains("more than one"), "{error}");
}

fn model() -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, None, &Device::Cpu).expect("the default model loads")
}

fn answer(model: &LoadedModel, session: &mut ContextSession, question: &str) -> Vec<u32> {
    let suffix = PromptSplit::question_suffix(model).unwrap();
    let ids = model
        .tokenizer
        .encode(&format!("{question}{suffix}"), false)
        .unwrap();
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
    };
    // No end-of-sequence id: every answer is 24 tokens long, past the interval of 8.
    session
        .answer(&model.model, &ids, &[], &config, &mut |_| Ok(()))
        .unwrap()
        .tokens
}

#[test]
fn run_compresses_while_answering_and_restores_the_context_for_the_next_question() {
    let model = model();
    let context = "The special magic number for ocean is 7194. ".repeat(12);
    let context_ids = PromptSplit::context_ids(&model, &context).unwrap();
    let question = "What is the special magic number for ocean?";
    for config in [DECODING, COMPOSED_DECODING] {
        let press = press(config);
        let (mut session, _) =
            ContextSession::compress(&model.model, &context_ids, press.as_ref(), &[]).unwrap();
        let context_lengths = session.cache().lengths();
        let first = answer(&model, &mut session, question);
        assert!(
            session.last_answer_compressions() > 0,
            "decode-time compression ran during the answer ({config})"
        );
        assert_eq!(
            session.cache().lengths(),
            context_lengths,
            "context restored"
        );
        let second = answer(&model, &mut session, question);
        assert_eq!(
            first, second,
            "the same question gets the same answer again"
        );

        // Without decode-time compression the long answer keeps every token; with it, the
        // cache was cut back to the target while answering, which changes what the model saw.
        let (mut plain, _) = ContextSession::compress(
            &model.model,
            &context_ids,
            &kvpress::core::NoPress::default(),
            &[],
        )
        .unwrap();
        answer(&model, &mut plain, question);
        assert_eq!(plain.last_answer_compressions(), 0);
    }
}

#[test]
fn a_saved_context_runs_its_decode_time_press_when_loaded() {
    let model = model();
    let context = "The special magic number for ocean is 7194. ".repeat(12);
    let context_ids = PromptSplit::context_ids(&model, &context).unwrap();
    let press = press(DECODING);
    let (mut session, _) =
        ContextSession::compress(&model.model, &context_ids, press.as_ref(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.kvp");
    kvpress::hooks::context_file::save(&path, &model, &session, &context_ids, press.as_ref())
        .unwrap();
    let (mut loaded, _) = kvpress::hooks::context_file::load(&path, &model).unwrap();
    let question = "What is the special magic number for ocean?";
    let from_memory = answer(&model, &mut session, question);
    let from_file = answer(&model, &mut loaded, question);
    assert!(loaded.last_answer_compressions() > 0);
    assert_eq!(from_memory, from_file);
}
