//! The header of a context file is checked against itself and the model behind its checksums:
//! each test changes one thing, seals the file again with fresh checksums, and expects the
//! variant naming that field. Also: non-finite values, and concurrent saves to one path.

mod context_file_support;

use context_file_support::{compress, model, press, Part, Parts, TINY_CONTEXT};
use kvpress::hooks::context_file::{self, load_bytes, save, ContextFileError, StoredKv};
use kvpress::hooks::{ContextSession, Error};
use safetensors::tensor::Dtype;

const KNORM: &str = "press = \"knorm\"\ncompression_ratio = 0.5\n";
const ADAKV: &str = "press = \"adakv\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n";
const REROTATED: &str =
    "press = \"key_rerotation\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n";

/// A saved tiny context compressed by the press of `config`, taken apart.
fn parts(config: &str) -> Parts {
    let model = model();
    let press = press(config);
    let (session, ids) = compress(model, TINY_CONTEXT, press.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.kvp");
    save(&path, model, &session, &ids, press.as_ref()).unwrap();
    let parts = Parts::of(&std::fs::read(&path).unwrap());
    load_bytes(&path, &parts.seal(), model).expect("sealing an intact file keeps it loadable");
    parts
}

fn error_of(bytes: &[u8]) -> ContextFileError {
    match load_bytes("edited.kvp".as_ref(), bytes, model()) {
        Err(Error::ContextFile(error)) => *error,
        Err(other) => panic!("not a context-file error: {other}"),
        Ok(_) => panic!("the edited file loaded"),
    }
}

/// Loading `parts` as edited fails naming `expected`.
fn assert_inconsistent(parts: &Parts, expected: &str) {
    match error_of(&parts.seal()) {
        ContextFileError::Inconsistent { field, message, .. } => {
            assert_eq!(field, expected, "{message}");
            eprintln!("`{field}` {message}");
        }
        other => panic!("expected `{expected}` to be inconsistent: {other}"),
    }
}

fn edited(parts: &Parts, edit: impl FnOnce(&mut Parts)) -> Parts {
    let mut parts = parts.clone();
    edit(&mut parts);
    parts
}

#[test]
fn header_fields_are_checked_against_the_model() {
    let dense = parts(KNORM);
    let n = dense.header.context_ids.len();
    let vocab = model().model.config().vocab_size as u32;
    let cases: Vec<(&str, Parts)> = vec![
        (
            "next_position",
            edited(&dense, |p| p.header.next_position = n + 1),
        ),
        (
            "next_position",
            edited(&dense, |p| p.header.next_position = n - 1),
        ),
        (
            "context_ids",
            edited(&dense, |p| p.header.context_ids[3] = vocab),
        ),
        (
            "context_ids",
            edited(&dense, |p| p.header.context_ids.clear()),
        ),
        (
            "head_lengths",
            edited(&dense, |p| drop(p.header.head_lengths.pop())),
        ),
        (
            "press",
            edited(&dense, |p| p.header.press["compression_ratio"] = 7.into()),
        ),
        (
            "press",
            edited(&dense, |p| p.header.press["press"] = "no_such_press".into()),
        ),
        (
            "press",
            edited(&dense, |p| p.header.press["window"] = 3.into()),
        ),
        // Same bytes, another shape: (1, 3, L, 64) read as (1, 1, 3L, 64).
        (
            "layer.0.keys",
            edited(&dense, |p| {
                let t = p.tensor("layer.0.keys");
                t.shape = vec![1, 1, 3 * t.shape[2], t.shape[3]];
            }),
        ),
        // Keys and values of different lengths.
        (
            "layer.4.values",
            edited(&dense, |p| {
                let t = p.tensor("layer.4.values");
                t.shape[2] -= 1;
                t.bytes.truncate(t.bytes.len() - 3 * 64 * 4);
            }),
        ),
        (
            "last_logits",
            edited(&dense, |p| {
                let t = p.tensor("last_logits");
                t.shape = vec![t.shape[0] - 1];
                t.bytes.truncate(t.bytes.len() - 4);
            }),
        ),
        // The header says f16, the tensors are f32.
        (
            "layer.0.keys",
            edited(&dense, |p| p.header.kv_dtype = StoredKv::F16),
        ),
        // The header says q4 (rows packed per head), the layers are dense floats.
        (
            "head_lengths[0]",
            edited(&dense, |p| p.header.kv_dtype = StoredKv::Q4),
        ),
        ("tensors", edited(&dense, |p| drop(p.tensors.pop()))),
        (
            "tensors",
            edited(&dense, |p| {
                let mut extra = p.tensors[0].clone();
                extra.name = "layer.99.keys".into();
                p.tensors.push(extra);
            }),
        ),
    ];
    let count = cases.len();
    for (field, parts) in &cases {
        assert_inconsistent(parts, field);
    }

    let headwise = parts(ADAKV);
    assert_inconsistent(
        &edited(&headwise, |p| {
            p.header.head_lengths[2].as_mut().unwrap().pop();
        }),
        "head_lengths[2]",
    );
    assert_inconsistent(
        &edited(&headwise, |p| {
            p.header.head_lengths[2].as_mut().unwrap()[0] += 1
        }),
        "layer.2.keys",
    );
    // With key re-rotation, the next token follows the compressed length.
    let rerotated = parts(REROTATED);
    let compressed = rerotated
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 4)
        .map(|t| t.shape[2])
        .max()
        .unwrap();
    assert_eq!(rerotated.header.next_position, compressed);
    assert_inconsistent(
        &edited(&rerotated, |p| {
            p.header.next_position = p.header.context_ids.len()
        }),
        "next_position",
    );
    eprintln!("{} header cross-checks refused", count + 3);
}

#[test]
fn metadata_and_header_text_must_be_as_written() {
    let dense = parts(KNORM);
    assert_inconsistent(
        &edited(&dense, |p| {
            drop(p.metadata.insert("extra".into(), "1".into()))
        }),
        "__metadata__",
    );
    // An unknown header field, with a correct checksum: the header does not parse.
    let mut text: serde_json::Value =
        serde_json::from_str(&dense.metadata[context_file::HEADER_KEY]).unwrap();
    text["extra"] = 1.into();
    let error = error_of(&dense.seal_text(&text.to_string()));
    assert!(matches!(error, ContextFileError::Damaged { .. }), "{error}");
}

#[test]
fn non_finite_values_are_refused_on_load_and_on_save() {
    let dense = parts(KNORM);
    for (tensor, value) in [
        ("layer.7.values", f32::NAN),
        ("layer.0.keys", f32::INFINITY),
        ("last_logits", f32::NEG_INFINITY),
    ] {
        let bytes = edited(&dense, |p| {
            let t: &mut Part = p.tensor(tensor);
            assert_eq!(t.dtype, Dtype::F32);
            t.bytes[40..44].copy_from_slice(&value.to_le_bytes());
        })
        .seal();
        match error_of(&bytes) {
            ContextFileError::NonFinite {
                tensor: t, index, ..
            } => {
                assert_eq!((t.as_str(), index), (tensor, 10))
            }
            other => panic!("{tensor}: {other}"),
        }
    }
    // A session whose logits are not finite is not saved.
    let model = model();
    let press = press(KNORM);
    let (mut session, ids) = compress(model, TINY_CONTEXT, press.as_ref());
    let n = session.last_logits.elem_count();
    let mut logits = vec![0f32; n];
    logits[5] = f32::NAN;
    session.last_logits =
        kvpress::candle::Tensor::from_vec(logits, n, &kvpress::candle::Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.kvp");
    match save(&path, model, &session, &ids, press.as_ref()) {
        Err(Error::ContextFile(error)) => assert!(
            matches!(*error, ContextFileError::NonFiniteCache { index: 5, .. }),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());
}

#[test]
fn concurrent_saves_to_one_path_leave_one_whole_file() {
    let model = model();
    let press = press(KNORM);
    let contexts = [
        "The code is 1111.",
        "The code is 2222, not 3333.",
        TINY_CONTEXT,
    ];
    let sessions: Vec<(ContextSession, Vec<u32>)> = contexts
        .iter()
        .map(|c| compress(model, c, press.as_ref()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.kvp");
    std::thread::scope(|scope| {
        for (session, ids) in &sessions {
            let (path, press) = (&path, press.as_ref());
            scope.spawn(move || {
                for _ in 0..4 {
                    save(path, model, session, ids, press).unwrap();
                }
            });
        }
    });
    let (_, header) = context_file::load(&path, model).unwrap();
    assert!(sessions.iter().any(|(_, ids)| *ids == header.context_ids));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["shared.kvp"], "no temporary file is left");
}
