//! Random mutations of valid press configs (every `configs/presses/*.toml` and the reference
//! configs, as TOML and as JSON): a mutated config either is refused with an error, or builds a
//! press that holds exactly what the file says. Never a panic, and never a field read as
//! something else or silently dropped: every value of the mutated file is found, equal, in the
//! press's own config, which builds the same press again.

#[path = "common/reference.rs"]
mod reference;

use std::path::PathBuf;

use kvpress::core::press::config::{parse_press_config, ConfigFormat};
use kvpress::core::press::{press_from_json, press_to_json};
use proptest::prelude::*;
use serde_json::Value;

/// Every valid config of the repository as JSON values.
fn seeds() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/presses");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.extend(reference::press_configs().into_iter().map(|(_, p)| p));
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let format = ConfigFormat::of_path(path).unwrap();
            parse_press_config(&text, format).unwrap_or_else(|e| panic!("{e}"));
            // The file's own fields, as written (the press adds defaults).
            match format {
                ConfigFormat::Json => serde_json::from_str(&text).unwrap(),
                ConfigFormat::Toml => {
                    let table: toml::Table = toml::from_str(&text).unwrap();
                    serde_json::to_value(table).unwrap()
                }
            }
        })
        .collect()
}

/// One change to a config value.
#[derive(Debug, Clone)]
enum Mutation {
    /// Removes the field at this path.
    Remove(Vec<String>),
    /// Sets the field at this path to this value.
    Set(Vec<String>, Value),
    /// Renames the field at this path.
    Rename(Vec<String>, String),
}

/// Every field path of `value` (objects only; `press` tags included).
fn paths(value: &Value, prefix: &[String], out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let mut path = prefix.to_vec();
            path.push(key.clone());
            out.push(path.clone());
            paths(child, &path, out);
        }
    }
}

fn field_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

fn apply(mut config: Value, mutation: &Mutation) -> Value {
    let (parent_path, last) = match mutation {
        Mutation::Remove(p) | Mutation::Set(p, _) | Mutation::Rename(p, _) => {
            (p[..p.len() - 1].to_vec(), p[p.len() - 1].clone())
        }
    };
    let Some(Value::Object(parent)) = field_mut(&mut config, &parent_path) else {
        return config;
    };
    match mutation {
        Mutation::Remove(_) => {
            parent.remove(&last);
        }
        Mutation::Set(_, value) => {
            parent.insert(last, value.clone());
        }
        Mutation::Rename(_, name) => {
            if let Some(value) = parent.remove(&last) {
                parent.insert(name.clone(), value);
            }
        }
    }
    config
}

/// Values a field may be set to: numbers at and beyond every range edge, wrong types, press
/// names, nested configs.
fn values() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            -1.0, -0.0, 0.0, 0.25, 0.5, 0.999, 1.0, 1.5, 7.0, 1e-300, 1e300, 3.0, 64.0, 4097.0
        ])
        .prop_map(|x: f64| serde_json::json!(x)),
        prop::sample::select(vec![0i64, 1, 2, 4, 5, -5, 1 << 40, i64::MAX, i64::MIN])
            .prop_map(|x| serde_json::json!(x)),
        prop::sample::select(vec![
            "knorm", "snapkv", "adakv", "decoding", "no_press", "", "nope", "0.5"
        ])
        .prop_map(|s| serde_json::json!(s)),
        Just(Value::Null),
        Just(serde_json::json!(true)),
        Just(serde_json::json!([])),
        Just(serde_json::json!([0.5, 0.5])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"press": "knorm", "compression_ratio": 0.5})),
        Just(serde_json::json!({"press": "decoding", "inner": {"press": "knorm"}})),
    ]
}

/// A config (one of the repository's) with one to three mutations.
fn mutated() -> impl Strategy<Value = Value> {
    let seeds = seeds();
    (
        0..seeds.len(),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0..3u8,
                values(),
                "[a-z_]{1,12}",
            ),
            1..4,
        ),
    )
        .prop_map(move |(seed, changes)| {
            let mut config = seeds[seed].clone();
            for (index, kind, value, name) in changes {
                let mut all = Vec::new();
                paths(&config, &[], &mut all);
                if all.is_empty() {
                    break;
                }
                let path = index.get(&all).clone();
                let mutation = match kind {
                    0 => Mutation::Remove(path),
                    1 => Mutation::Set(path, value),
                    _ => Mutation::Rename(path, name),
                };
                config = apply(config, &mutation);
            }
            config
        })
}

/// Whether the press's own config `written` holds every value of `given` (numbers equal as
/// f64, arrays and objects field by field).
fn holds(written: &Value, given: &Value) -> bool {
    match (written, given) {
        (Value::Object(w), Value::Object(g)) => g
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| holds(wv, v))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| holds(a, b))
        }
        (Value::Number(w), Value::Number(g)) => w.as_f64() == g.as_f64(),
        (w, g) => w == g,
    }
}

/// Checks one mutated config, given as `text` in `format`.
fn check(config: &Value, text: &str, format: ConfigFormat) -> Result<(), TestCaseError> {
    let Ok(press) = parse_press_config(text, format) else {
        return Ok(());
    };
    press
        .validate()
        .map_err(|e| TestCaseError::fail(format!("built but invalid: {e}\n{text}")))?;
    let json = press_to_json(press.as_ref()).unwrap();
    let written: Value = serde_json::from_str(&json).unwrap();
    prop_assert!(
        holds(&written, config),
        "the press does not hold what the file says:\nfile  {config}\npress {written}"
    );
    let again = press_from_json(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(press_to_json(again.as_ref()).unwrap(), json);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_config_is_refused_or_holds_exactly_what_it_says(config in mutated()) {
        check(&config, &config.to_string(), ConfigFormat::Json)?;
        // The same config as TOML (where TOML can hold it: no nulls).
        if let Ok(text) = toml::to_string(&config) {
            check(&config, &text, ConfigFormat::Toml)?;
        }
    }
}

/// The mutations reach both outcomes often (so the property above is exercised both ways):
/// counts of 2,000 mutated configs refused and built, printed for the record.
#[test]
fn mutations_give_both_refused_and_valid_configs() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = mutated();
    let (mut refused, mut built) = (0, 0);
    for _ in 0..2000 {
        let config = strategy.new_tree(&mut runner).unwrap().current();
        match parse_press_config(&config.to_string(), ConfigFormat::Json) {
            Ok(_) => built += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("2000 mutated configs: {refused} refused, {built} built");
    assert!(
        refused >= 200 && built >= 200,
        "{refused} refused, {built} built"
    );
}
