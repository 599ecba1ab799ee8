//! The runtime on tiny random models built in memory (no download): compress once and answer
//! many (each answer rewinds the cache), decode-time presses compressing while answering (and
//! the context restored after), a recorded prefill at several ratios equal to one compression
//! per ratio, batches refusing what they cannot run, and a failed forward never leaving a
//! cache half restored.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use candle_core::quantized::GgmlDType;
use common::*;
use kvpress_core::press::{press_from_toml, Press};
use kvpress_core::{AttentionHook, Error as CoreError, LayerContext, NoPress, Selection};
use kvpress_hooks::batch::answer_batch;
use kvpress_hooks::{ContextSession, Error, RecordedPrefill};
use kvpress_models::{GenerationConfig, LoadedModel, Sampling};
// Linked so that press configs name them (and decode-time presses can be copied by config).
use presses_baselines as _;
use presses_wrappers as _;

/// 40 context tokens (the tiny models have 64 positions and a vocabulary of 40).
const CONTEXT: [u32; 40] = [
    1, 5, 9, 13, 31, 34, 29, 17, 22, 38, 2, 6, 10, 14, 30, 33, 28, 16, 21, 37, 3, 7, 11, 15, 32,
    35, 27, 18, 23, 36, 4, 8, 12, 19, 24, 25, 26, 20, 39, 0,
];
const QUESTION: [u32; 3] = [12, 7, 30];

fn tiny(arch: Arch) -> LoadedModel {
    Spec::new(arch)
        .build()
        .gguf(GgmlDType::F32)
        .load(F32)
        .unwrap()
}

fn press(toml: &str) -> Box<dyn Press> {
    press_from_toml(toml).unwrap()
}

/// 12 greedy tokens (no end-of-sequence id, so always 12).
fn answer(model: &LoadedModel, session: &mut ContextSession) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: 12,
        sampling: Sampling::Greedy,
    };
    session
        .answer(&model.model, &QUESTION, &[], &config, &mut |_| Ok(()))
        .unwrap()
        .tokens
}

#[test]
fn a_compressed_context_answers_the_same_question_the_same_way_every_time() {
    for arch in Arch::ALL {
        let model = tiny(arch);
        let knorm = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
        let (mut session, report) =
            ContextSession::compress(&model.model, &CONTEXT, knorm.as_ref(), &[]).unwrap();
        assert_eq!(report.context_tokens, CONTEXT.len());
        assert!((report.kept_fraction() - 0.5).abs() < 1e-9, "{arch:?}");
        assert!(report.kv_bytes < report.kv_bytes_full);
        let lengths = session.cache().lengths();
        assert_eq!(lengths, vec![20; lengths.len()]);
        let first = answer(&model, &mut session);
        assert_eq!(session.cache().lengths(), lengths, "rewound to the context");
        assert_eq!(session.cache().seen_tokens(), CONTEXT.len());
        assert_eq!(answer(&model, &mut session), first);
        assert_eq!(session.last_answer_compressions(), 0);
    }
}

#[test]
fn a_decode_time_press_compresses_while_answering_and_the_context_comes_back() {
    let model = tiny(Arch::Llama);
    let decoding = press(
        "press = \"decoding\"\ncompression_interval = 4\ntarget_size = 16\n\
         hidden_states_buffer_size = 4\n[inner]\npress = \"knorm\"\n",
    );
    let (mut session, report) =
        ContextSession::compress(&model.model, &CONTEXT, decoding.as_ref(), &[]).unwrap();
    assert_eq!(report.kept_fraction(), 1.0, "the prefill keeps everything");
    let context = session.cache().lengths();
    let first = answer(&model, &mut session);
    assert!(session.last_answer_compressions() > 0);
    assert_eq!(
        session.cache().lengths(),
        context,
        "the context is restored"
    );
    assert_eq!(answer(&model, &mut session), first);

    // The same model without decode-time compression sees the whole context while answering.
    let (mut full, _) =
        ContextSession::compress(&model.model, &CONTEXT, &NoPress::default(), &[]).unwrap();
    answer(&model, &mut full);
    assert_eq!(full.last_answer_compressions(), 0);

    // Batched answering decodes without presses: it refuses such a context.
    let error = answer_batch(
        &model,
        std::slice::from_mut(&mut session),
        &[QUESTION.to_vec()],
        4,
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::PressNotSupported {
                front_end: "batch",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_recorded_prefill_at_several_ratios_equals_one_compression_per_ratio() {
    let model = tiny(Arch::Qwen2);
    let ratios = [0.25, 0.5, 0.75];
    let knorm = press("press = \"knorm\"\n");
    let recorded = RecordedPrefill::record(&model.model, &CONTEXT).unwrap();
    let at_once = recorded
        .compress_at_ratios(&model.model, knorm.as_ref(), &ratios, &[])
        .unwrap();
    for ((mut session, report), ratio) in at_once.into_iter().zip(ratios) {
        let alone = press(&format!("press = \"knorm\"\ncompression_ratio = {ratio}\n"));
        let (mut expected, expected_report) =
            ContextSession::compress(&model.model, &CONTEXT, alone.as_ref(), &[]).unwrap();
        let kept = |r: &kvpress_hooks::CompressionReport| -> Vec<Selection> {
            r.layers.iter().map(|l| l.selection.clone()).collect()
        };
        assert_eq!(kept(&report), kept(&expected_report), "ratio {ratio}");
        assert_eq!(answer(&model, &mut session), answer(&model, &mut expected));
    }
}

/// Compacts layer 0 to its first token, then fails in layer 1.
#[derive(Debug)]
struct CompactThenFail;

impl AttentionHook for CompactThenFail {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if context.layer_idx == 0 {
            let n = context.cache.len();
            let first = Selection::new(vec![vec![0]; 2], 1, 2, n)?;
            context.cache.compact(&first, None)?;
            return Ok(());
        }
        Err(CoreError::InvalidArgument("the hook fails".to_string()))
    }
}

#[test]
fn a_forward_that_fails_after_a_hook_compacted_a_layer_leaves_no_half_restored_cache() {
    let model = tiny(Arch::Llama);
    let mut cache = model.model.new_cache();
    model
        .model
        .forward(&ids(&CONTEXT[..20]), &mut cache, None)
        .unwrap();
    let result = model.model.forward(
        &ids(&CONTEXT[20..24]),
        &mut cache,
        Some(&mut CompactThenFail),
    );
    assert!(result.is_err());
    // Layer 0 lost tokens it held before the forward: the cache cannot be as it was, so it is
    // empty rather than mixed.
    assert!(
        cache.lengths().iter().all(|&l| l == 0),
        "{:?}",
        cache.lengths()
    );
    assert_eq!(cache.seen_tokens(), 0);

    // Without compaction a failed forward leaves the cache exactly as it was.
    let mut cache = model.model.new_cache();
    model
        .model
        .forward(&ids(&CONTEXT[..20]), &mut cache, None)
        .unwrap();
    let before = cache.lengths();
    let too_long = vec![1u32; 60];
    assert!(model
        .model
        .forward(&ids(&too_long), &mut cache, None)
        .is_err());
    assert_eq!(cache.lengths(), before);
    assert_eq!(cache.seen_tokens(), 20);
}
