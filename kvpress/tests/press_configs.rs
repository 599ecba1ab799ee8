//! The press configuration contract: the files in `reference/presses/` (kvpress's configurations,
//! or those of `KVPRESS_REFERENCE_DIR`) build the presses they name, TOML works like JSON, and
//! bad configs are errors that say what is valid.

#[path = "common/reference.rs"]
mod reference;

use kvpress::core::press::{
    default_parameters, press_from_file, press_from_json, press_from_toml, press_to_json,
    registered_presses,
};

#[test]
fn every_reference_config_builds_the_press_it_names() {
    let mut built = 0;
    for (name, path) in reference::press_configs() {
        match press_from_file(&path) {
            Ok(press) => {
                built += 1;
                // The press serializes back to a config that builds the same press.
                let json = press_to_json(press.as_ref()).unwrap();
                let again = press_from_json(&json).unwrap();
                assert_eq!(press_to_json(again.as_ref()).unwrap(), json, "{name}");
                let original: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let written: serde_json::Value = serde_json::from_str(&json).unwrap();
                for (field, value) in original.as_object().unwrap() {
                    if field != "inner" {
                        assert_eq!(
                            written[field]
                                .as_f64()
                                .or(written[field].as_str().map(|_| 0.0)),
                            value.as_f64().or(value.as_str().map(|_| 0.0)),
                            "{name}: field {field} kept its value"
                        );
                    }
                }
            }
            Err(error) => panic!("{name}: {error}"),
        }
    }
    assert_eq!(built, 13);
}

#[test]
fn toml_builds_the_same_press_as_json() {
    let toml = press_from_toml(
        r#"
        press = "criticalkv"
        epsilon = 0.0001
        first_stage_ratio = 0.5
        [inner]
        press = "snapkv"
        compression_ratio = 0.5
        window_size = 64
        kernel_size = 5
        "#,
    )
    .unwrap();
    let json = press_from_file(&reference::press_config("criticalkv_snapkv@0.5")).unwrap();
    assert_eq!(
        press_to_json(toml.as_ref()).unwrap(),
        press_to_json(json.as_ref()).unwrap()
    );
}

#[test]
fn bad_configs_say_what_is_valid() {
    let error = press_from_json(r#"{"press": "snap"}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown press `snap`"), "{error}");
    assert!(error.contains("snapkv"), "{error}");

    let error = press_from_json(r#"{"press": "snapkv", "window": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `window`"), "{error}");
    assert!(error.contains("window_size"), "{error}");

    let error = press_from_json(r#"{"press": "knorm", "compression_ratio": 1.0}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("outside [0, 1)"), "{error}");

    let error = press_from_json(r#"{"compression_ratio": 0.5}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("press"), "{error}");

    let error = press_from_toml("press = ").unwrap_err().to_string();
    assert!(error.contains("not valid TOML"), "{error}");
}

#[test]
fn registration_names_are_config_names() {
    for registration in registered_presses() {
        let example = (registration.example)();
        let value = serde_json::to_value(&example).unwrap();
        assert_eq!(value["press"], registration.name);
    }
}

#[test]
fn registry_listing() {
    let listing: Vec<(String, String, serde_json::Map<String, serde_json::Value>)> =
        registered_presses()
            .into_iter()
            .map(|r| {
                (
                    r.name.to_string(),
                    r.description.to_string(),
                    default_parameters(r).unwrap(),
                )
            })
            .collect();
    insta::assert_json_snapshot!(listing);
}

/// A clone of the repository tests alone: the parity data is vendored in `reference/`.
#[test]
fn the_repository_holds_the_reference_data() {
    let dir = reference::vendored_dir();
    for file in [
        "README.md",
        "prompts/niah-noise-1k.json",
        "fixtures/niah-noise-1k.json.gz",
    ] {
        assert!(
            dir.join(file).is_file(),
            "reference/{file} is missing (scripts/refresh-reference.sh makes it)"
        );
    }
    let presses = std::fs::read_dir(dir.join("presses"))
        .expect("reference/presses")
        .count();
    assert_eq!(presses, 13, "the thirteen configurations of the fixture");
}
