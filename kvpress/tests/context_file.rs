//! Saved compressed contexts: compress, save, load and answer gives the answer of
//! compress-then-answer in one process, for a dense and a head-wise press; the file is about
//! the kept fraction of a full cache in the cache's own dtype (f16 files hold F16); foreign,
//! version-1 and future files are refused clearly; the model is recognised by its bytes, not its
//! name. Damaged files: `context_file_damage.rs`; header cross-checks: `context_file_checks.rs`.

mod context_file_support;

use std::path::Path;
use std::time::Instant;

use context_file_support::{answer, compress, default_path, load, model, press, Parts};
use kvpress::candle::DType;
use kvpress::core::LayerSnapshot;
use kvpress::hooks::context_file::{
    self, load_bytes, save, weights_sha256, ContextFileError, StoredKv,
};
use kvpress::hooks::{ContextSession, Error, PromptSplit};
use safetensors::tensor::{Dtype, SafeTensors};

fn context() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/needle-haystack.txt");
    std::fs::read_to_string(path).unwrap()
}

fn file_error(result: kvpress::hooks::Result<impl Sized>) -> ContextFileError {
    match result {
        Err(Error::ContextFile(error)) => *error,
        Err(other) => panic!("not a context file error: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn saved_contexts_answer_like_fresh_ones() {
    let model = model();
    let context = context();
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("snapkv", "press = \"snapkv\"\ncompression_ratio = 0.5\n"),
        (
            "adakv",
            "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n",
        ),
    ] {
        let press = press(config);
        let ids = PromptSplit::context_ids(model, &context).unwrap();
        let (mut session, report) =
            ContextSession::compress(&model.model, &ids, press.as_ref(), &[]).unwrap();
        let fresh = answer(model, &mut session);
        let file = dir.path().join(format!("{name}.kvp"));
        let size = save(&file, model, &session, &ids, press.as_ref()).unwrap();
        assert_eq!(size, std::fs::metadata(&file).unwrap().len());
        let (mut loaded, header) = context_file::load(&file, model).unwrap();
        assert_eq!(header.context_ids, ids);
        assert_eq!(header.press["press"], name);
        assert_eq!(header.kv_dtype, StoredKv::F32);
        assert_eq!(loaded.cache().lengths(), session.cache().lengths());
        assert_eq!(answer(model, &mut loaded), fresh, "{name}");
        // The file holds what the compressed cache holds (plus a small header).
        let fraction = size as f64 / report.kv_bytes_full as f64;
        eprintln!("{name}: {size} bytes, {fraction:.3} of the full cache");
        assert!(
            (fraction - report.kept_fraction()).abs() < 0.02,
            "{name}: {fraction}"
        );
    }
}

#[test]
fn other_versions_other_models_and_other_files_are_refused() {
    let model = model();
    let press = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
    let (session, ids) = compress(model, context_file_support::TINY_CONTEXT, press.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knorm.kvp");
    save(&file, model, &session, &ids, press.as_ref()).unwrap();
    let parts = Parts::of(&std::fs::read(&file).unwrap());
    for version in ["1", "3"] {
        let mut old = parts.clone();
        old.metadata.insert("version".into(), version.into());
        match file_error(load_bytes(&file, &old.seal(), model)) {
            ContextFileError::Version { found, .. } => assert_eq!(found, version),
            other => panic!("{other}"),
        }
    }
    let message = file_error(load_bytes(
        &file,
        &{
            let mut old = parts.clone();
            old.metadata.insert("version".into(), "1".into());
            old.seal()
        },
        model,
    ))
    .to_string();
    assert!(message.contains("compress the context again"), "{message}");

    // Another model of the same name, size and shape: only the weights' hash differs.
    let mut foreign = parts.clone();
    foreign.header.model.sha256 = "0".repeat(64);
    let error = file_error(load_bytes(&file, &foreign.seal(), model));
    assert!(
        matches!(error, ContextFileError::OtherModel { .. }),
        "{error}"
    );

    let not_ours = dir.path().join("model.kvp");
    std::fs::write(&not_ours, b"hello").unwrap();
    let error = file_error(context_file::load(&not_ours, model));
    assert!(
        matches!(error, ContextFileError::NotAContextFile { .. }),
        "{error}"
    );
    let missing = dir.path().join("missing.kvp");
    let error = file_error(context_file::load(&missing, model));
    assert!(matches!(error, ContextFileError::Read { .. }), "{error}");
}

#[test]
fn the_model_is_recognised_by_its_bytes_not_its_name() {
    let model = model();
    let press = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
    let (session, ids) = compress(model, context_file_support::TINY_CONTEXT, press.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knorm.kvp");
    save(&file, model, &session, &ids, press.as_ref()).unwrap();

    // How long hashing the default model takes, uncached (a copy is a new file) and cached.
    let renamed = dir.path().join("renamed-copy.gguf");
    std::fs::copy(default_path(), &renamed).unwrap();
    let start = Instant::now();
    let hash = weights_sha256(&renamed).unwrap();
    let first = start.elapsed();
    let start = Instant::now();
    assert_eq!(weights_sha256(&renamed).unwrap(), hash);
    let cached = start.elapsed();
    let mib = std::fs::metadata(&renamed).unwrap().len() as f64 / (1 << 20) as f64;
    eprintln!(
        "hashing the default model ({mib:.1} MiB): {:.3} s ({:.0} MiB/s), cached {:.6} s",
        first.as_secs_f64(),
        mib / first.as_secs_f64(),
        cached.as_secs_f64()
    );

    // A byte-identical copy under another name is the same model.
    let copy = load(&renamed);
    let (mut loaded, header) = context_file::load(&file, &copy).unwrap();
    assert_eq!(header.model.sha256, hash);
    let mut fresh = compress(model, context_file_support::TINY_CONTEXT, press.as_ref()).0;
    assert_eq!(answer(&copy, &mut loaded), answer(model, &mut fresh));
    drop((copy, loaded));

    // Same name and size, one byte of the weights changed (near the end: tensor data): another
    // model.
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let same_name = other_dir.join(default_path().file_name().unwrap());
    let mut bytes = std::fs::read(&renamed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&same_name, &bytes).unwrap();
    drop(bytes);
    let other = load(&same_name);
    let error = file_error(context_file::load(&file, &other));
    assert!(
        matches!(error, ContextFileError::OtherModel { .. }),
        "{error}"
    );
}

#[test]
fn an_f16_cache_is_stored_as_f16_and_converted_on_request() {
    let mut model16 = load(&default_path());
    model16
        .model
        .set_kv_storage(kvpress::models::KvStorage::Float(DType::F16))
        .unwrap();
    let press = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
    let (mut session, ids) = compress(&model16, context_file_support::TINY_CONTEXT, press.as_ref());
    let fresh = answer(&model16, &mut session);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f16.kvp");
    let size = save(&file, &model16, &session, &ids, press.as_ref()).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let stored = SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in stored.tensors() {
        let expected = if name == "last_logits" {
            Dtype::F32
        } else {
            Dtype::F16
        };
        assert_eq!(view.dtype(), expected, "{name}");
    }
    let kv_bytes = session.cache().bytes_used();
    let logits = 4 * session.last_logits.elem_count();
    eprintln!("f16 file: {size} bytes for {kv_bytes} bytes of f16 cache and {logits} of logits");
    assert!(size as usize >= kv_bytes + logits && (size as usize) < kv_bytes + logits + (64 << 10));

    let (mut loaded, header) = context_file::load(&file, &model16).unwrap();
    assert_eq!(header.kv_dtype, StoredKv::F16);
    // The loaded cache allocates exactly what it stores, in f16 (what `run --load` reports).
    assert_eq!(loaded.cache().bytes_reserved(), kv_bytes);
    assert_eq!(answer(&model16, &mut loaded), fresh);

    // Into an f32 cache: converted, twice the bytes.
    let (converted, header) = context_file::load(&file, model()).unwrap();
    assert_eq!(header.kv_dtype, StoredKv::F16);
    assert_eq!(converted.cache().bytes_reserved(), 2 * kv_bytes);

    // Head-wise layers too: compressed in f16, saved as f16 rows with their head lengths and
    // loaded into the same f16 rows (the same bytes, the same answer); into an f32 cache they
    // are converted.
    let adakv = context_file_support::press(
        "press = \"adakv\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n",
    );
    let (mut session, ids) = compress(&model16, context_file_support::TINY_CONTEXT, adakv.as_ref());
    let kv_bytes = session.cache().bytes_used();
    let file = dir.path().join("adakv-f16.kvp");
    save(&file, &model16, &session, &ids, adakv.as_ref()).unwrap();
    let (mut loaded, header) = context_file::load(&file, &model16).unwrap();
    assert_eq!(header.kv_dtype, StoredKv::F16);
    assert!(header.head_lengths.iter().all(Option::is_some));
    assert_eq!(loaded.cache().bytes_used(), kv_bytes);
    let (stored, reloaded) = (per_head_rows(&session), per_head_rows(&loaded));
    assert!(stored.iter().all(|(dtype, ..)| *dtype == DType::F16));
    assert_eq!(stored, reloaded);
    assert_eq!(
        answer(&model16, &mut loaded),
        answer(&model16, &mut session)
    );
    let (converted, _) = context_file::load(&file, model()).unwrap();
    let converted = per_head_rows(&converted);
    for ((dtype, lengths, rows), (_, stored_lengths, stored_rows)) in converted.iter().zip(&stored)
    {
        assert_eq!(
            (*dtype, lengths, rows),
            (DType::F32, stored_lengths, stored_rows)
        );
    }
}

/// Every layer's storage dtype, head lengths and key and value rows (as f32), for a cache of
/// head-wise layers.
fn per_head_rows(session: &ContextSession) -> Vec<(DType, Vec<usize>, Vec<f32>)> {
    let as_f32 = |t: &kvpress::candle::Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    kvpress::hooks::snapshot::snapshot_layers(session.cache())
        .unwrap()
        .iter()
        .map(|snapshot| match snapshot {
            LayerSnapshot::PerHead {
                keys,
                values,
                head_lengths,
                ..
            } => {
                let mut rows = as_f32(keys);
                rows.extend(as_f32(values));
                (keys.dtype(), head_lengths.clone(), rows)
            }
            _ => panic!("a head-wise layer"),
        })
        .collect()
}

/// A quantized cache is saved as its codes (`u8` packed rows, head lengths for every layer) and
/// loaded into a cache of the same bits with the codes untouched, dense and head-wise alike;
/// into an f32 cache it is dequantized.
#[test]
fn a_quantized_cache_is_stored_as_its_codes() {
    let mut model4 = load(&default_path());
    model4
        .model
        .set_kv_storage(kvpress::models::KvStorage::Quantized(
            kvpress::models::QuantBits::Four,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [
        (
            "snapkv",
            "press = \"snapkv\"\ncompression_ratio = 0.5\nwindow_size = 8\n",
        ),
        (
            "adakv",
            "press = \"adakv\"\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\nwindow_size = 8\n",
        ),
    ] {
        let press = press(config);
        let (mut session, ids) =
            compress(&model4, context_file_support::TINY_CONTEXT, press.as_ref());
        let packed = |session: &ContextSession| -> Vec<_> {
            let cache = session.cache();
            (0..cache.n_layers())
                .map(|i| {
                    cache
                        .layer(i)
                        .unwrap()
                        .packed()
                        .unwrap()
                        .expect("quantized")
                })
                .collect()
        };
        let original = packed(&session);
        assert!(
            original.iter().all(|layer| layer.key_orders.is_some()),
            "{name}: keys grouped by magnitude, their channel orders saved"
        );
        let fresh = answer(&model4, &mut session);
        let file = dir.path().join(format!("{name}-q4.kvp"));
        let size = save(&file, &model4, &session, &ids, press.as_ref()).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let stored = SafeTensors::deserialize(&bytes).unwrap();
        for (tensor, view) in stored.tensors() {
            let expected = if tensor == "last_logits" {
                Dtype::F32
            } else {
                Dtype::U8
            };
            assert_eq!(view.dtype(), expected, "{name}: {tensor}");
        }
        let kv_bytes = session.cache().bytes_used();
        let logits = 4 * session.last_logits.elem_count();
        assert!(
            size as usize >= kv_bytes + logits && (size as usize) < kv_bytes + logits + (64 << 10),
            "{name}: {size} bytes for {kv_bytes} of codes"
        );

        let (mut loaded, header) = context_file::load(&file, &model4).unwrap();
        assert_eq!(header.kv_dtype, StoredKv::Q4);
        assert!(header.head_lengths.iter().all(Option::is_some));
        assert_eq!(packed(&loaded), original, "{name}: the codes as they were");
        assert_eq!(loaded.cache().bytes_reserved(), kv_bytes);
        assert_eq!(answer(&model4, &mut loaded), fresh, "{name}");

        // Into an f32 cache: dequantized, 256 bytes per row of 64 against 40 (plus the
        // flattened cache's per-head bookkeeping).
        let (converted, _) = context_file::load(&file, model()).unwrap();
        assert_eq!(converted.cache().lengths(), loaded.cache().lengths());
        let as_f32 = kv_bytes / 40 * 256;
        let converted_bytes = converted.cache().bytes_used();
        assert!(
            converted_bytes >= as_f32 && converted_bytes < as_f32 + 4096,
            "{name}: {converted_bytes} bytes in f32 for {kv_bytes} in q4"
        );
    }
}
