//! Parity of every press with NVIDIA kvpress on the default model: for each configuration in
//! `reference/presses/`, the kept sets, scores, cache lengths and answers in
//! `reference/fixtures/niah-noise-1k.json.gz`. Needs the default model (`kvpress fetch-model`,
//! which CI runs); `KVPRESS_REFERENCE_DIR` names another reference directory than the
//! repository's `reference/`.

#[path = "common/compare.rs"]
mod compare;
#[path = "common/reference.rs"]
mod reference;

use compare::compare;

use kvpress::candle::{DType, Device};
use kvpress::core::press::press_from_file;
use kvpress::hooks::trace::{trace, PromptFile};
use kvpress::models::{load_model, WeightMode};

/// Head-wise configurations: kvpress masks instead of shortening its cache, so its cache lengths
/// stay full, while ours store only what each head keeps.
fn is_head_wise(name: &str) -> bool {
    name.starts_with("adakv") || name.starts_with("critical_adakv")
}

#[test]
fn every_press_matches_kvpress() {
    let fixture = reference::fixture("niah-noise-1k");
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let model = load_model(&path, Some(WeightMode::Dense(DType::F32)), &Device::Cpu)
        .expect("the default model loads");
    let prompt: PromptFile = serde_json::from_value(fixture["prompt"].clone()).unwrap();
    // Every configuration of the fixture.
    let presses: Vec<_> = reference::press_configs()
        .into_iter()
        .map(|(name, path)| {
            let press = press_from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, press)
        })
        .collect();
    assert_eq!(
        presses.len(),
        13,
        "the thirteen configurations of the fixture"
    );
    let traced = trace(&model, &prompt, &presses).expect("trace runs");

    let mut failures = Vec::new();
    let mut answers_equal = 0;
    eprintln!(
        "press | mean Jaccard | min Jaccard | worst score error / tolerance | lengths | answer"
    );
    for (name, got) in &traced.presses {
        let c = compare(got, &fixture["presses"][name]);
        eprintln!(
            "{name} | {:.4} | {:.4} | {:.3} | {} | {}",
            c.mean_jaccard, c.min_jaccard, c.worst_score_error, c.lengths_equal, c.answer_equal
        );
        if c.mean_jaccard < 0.99 || c.min_jaccard < 0.9 {
            failures.push(format!(
                "{name}: kept sets mean Jaccard {:.4}, min {:.4}",
                c.mean_jaccard, c.min_jaccard
            ));
        }
        if c.worst_score_error > 1.0 {
            failures.push(format!(
                "{name}: a score is {:.2}x the tolerance away",
                c.worst_score_error
            ));
        }
        if is_head_wise(name) {
            // Each head stores exactly what kvpress left unmasked; the answers must be kvpress's.
            if !c.answer_equal {
                failures.push(format!("{name}: the answer differs from kvpress's"));
            }
        } else {
            if !c.lengths_equal {
                failures.push(format!(
                    "{name}: cache lengths differ: {:?}",
                    got.cache_lengths
                ));
            }
            answers_equal += usize::from(c.answer_equal);
        }
        assert!(
            got.kv_bytes <= got.kv_bytes_full,
            "{name}: compression saves memory"
        );
    }
    if answers_equal < 9 {
        failures.push(format!(
            "only {answers_equal} of the 10 dense presses' answers equal kvpress's"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
