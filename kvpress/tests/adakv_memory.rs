//! Real memory savings: AdaKV at ratio 0.75 on a 4096-token context stores a quarter of the
//! full cache (plus the flattened layout's small metadata), as reported by the pipeline.

use kvpress::candle::Device;
use kvpress::core::press::press_from_toml;
use kvpress::hooks::ContextSession;
use kvpress::models::load_model;

#[test]
fn adakv_at_ratio_three_quarters_stores_a_quarter_of_a_4k_context() {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let loaded = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    let press = press_from_toml(
        "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.75\n",
    )
    .unwrap();
    // The benchmark's filler text (`kvpress bench`), tokenized and repeated to 4096 tokens.
    let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and \
                  back again. ";
    let unit = loaded.tokenizer.encode(filler, false).unwrap();
    let ids: Vec<u32> = unit.iter().copied().cycle().take(4096).collect();
    let (session, report) =
        ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[]).unwrap();
    let dense = 30 * 2 * 3 * 64 * 4 * 4096;
    assert!(
        report.kv_bytes_full >= dense,
        "the full cache holds every token"
    );
    let limit = 0.25 * dense as f64 * 1.02;
    assert!(
        (report.kv_bytes as f64) <= limit,
        "{} bytes stored, limit {limit}",
        report.kv_bytes
    );
    assert_eq!(session.cache().bytes_reserved(), report.kv_bytes);
    // Heads really differ in length, and the layer budget is exact.
    let layer = &report.layers[10];
    assert!(layer.selection.uniform_len().is_none());
    assert_eq!(layer.selection.total_kept(), 3 * 1024);
}
