//! Bad press configs fail with a [`ConfigError`] naming the problem and what is valid.

use kvpress_core::press::config::{
    build_press, parse_press_config, read_press_config, ConfigError, ConfigFormat,
};
use kvpress_core::press::{press_from_file, press_from_toml, Compression, Press, PressInput};
use serde::{Deserialize, Serialize};

/// A press with the field types real presses have (a ratio, a window, a nested press).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPress {
    compression_ratio: f64,
    window_size: u32,
}

#[typetag::serde(name = "test_press")]
impl Press for TestPress {
    fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    fn validate(&self) -> kvpress_core::Result<()> {
        kvpress_core::press::check_compression_ratio("test_press", self.compression_ratio)
    }

    fn compress_at_ratio(
        &self,
        input: &PressInput<'_>,
        _ratio: f64,
    ) -> kvpress_core::Result<Compression> {
        Compression::keep_all(input)
    }
}

kvpress_core::register_press!("test_press", "a press for config tests", || {
    Box::new(TestPress {
        compression_ratio: 0.0,
        window_size: 8,
    })
});

/// A wrapper around another press.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestWrapper {
    inner: Box<dyn Press>,
}

#[typetag::serde(name = "test_wrapper")]
impl Press for TestWrapper {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> kvpress_core::Result<()> {
        self.inner.validate()
    }

    fn compress_at_ratio(
        &self,
        input: &PressInput<'_>,
        ratio: f64,
    ) -> kvpress_core::Result<Compression> {
        self.inner.compress_at_ratio(input, ratio)
    }
}

kvpress_core::register_press!("test_wrapper", "a wrapper for config tests", || {
    Box::new(TestWrapper {
        inner: Box::new(kvpress_core::NoPress::default()),
    })
});

fn toml_error(text: &str) -> ConfigError {
    parse_press_config(text, ConfigFormat::Toml).unwrap_err()
}

fn json_error(text: &str) -> ConfigError {
    parse_press_config(text, ConfigFormat::Json).unwrap_err()
}

#[test]
fn good_configs_still_build() {
    let press =
        press_from_toml("press = \"test_press\"\ncompression_ratio = 0.5\nwindow_size = 4\n")
            .unwrap();
    assert_eq!(press.compression_ratio(), 0.5);
    let press = parse_press_config(
        r#"{"press": "test_wrapper", "inner": {"press": "test_press", "compression_ratio": 0.25, "window_size": 2}}"#,
        ConfigFormat::Json,
    )
    .unwrap();
    assert_eq!(press.compression_ratio(), 0.25);
}

#[test]
fn nan_and_inf_name_the_field_and_say_numbers_must_be_finite() {
    for value in ["nan", "inf", "-inf", "+nan"] {
        let text =
            format!("press = \"test_press\"\ncompression_ratio = {value}\nwindow_size = 4\n");
        let error = toml_error(&text);
        let ConfigError::NonFinite { field, line, .. } = &error else {
            panic!("{value}: {error:?}");
        };
        assert_eq!(field, "compression_ratio");
        assert_eq!(*line, Some(2));
        let message = error.to_string();
        assert!(message.contains("must be finite numbers"), "{message}");
        assert!(!message.contains("null"), "{message}");
    }
    let nested = toml_error("press = \"test_wrapper\"\n[inner]\npress = \"test_press\"\ncompression_ratio = nan\nwindow_size = 1\n");
    assert!(
        matches!(&nested, ConfigError::NonFinite { field, .. } if field == "inner.compression_ratio"),
        "{nested:?}"
    );
}

#[test]
fn null_values_say_they_may_be_a_nan_read_elsewhere() {
    let value =
        serde_json::json!({"press": "test_press", "compression_ratio": null, "window_size": 1});
    let error = build_press(value).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Field { field, .. } if field == "compression_ratio"),
        "{error:?}"
    );
    assert!(error.to_string().contains("finite numbers"), "{error}");
}

#[test]
fn json_nan_says_json_has_no_nan() {
    let error = json_error(r#"{"press": "test_press", "compression_ratio": NaN}"#);
    assert!(matches!(
        error,
        ConfigError::Syntax {
            format: ConfigFormat::Json,
            ..
        }
    ));
    assert!(error.to_string().contains("JSON has no NaN"), "{error}");
}

#[test]
fn integer_overflow_is_a_toml_error_naming_the_line() {
    let error = toml_error("press = \"test_press\"\nwindow_size = 99999999999999999999\n");
    let ConfigError::IntegerOverflow { text, line } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(text, "99999999999999999999");
    assert_eq!(*line, Some(2));
    let message = error.to_string();
    assert!(message.contains("not valid TOML (line 2)"), "{message}");
    assert!(!message.contains("JSON"), "{message}");
}

#[test]
fn out_of_range_integers_name_the_field() {
    for value in ["-1", "9999999999999"] {
        let text =
            format!("press = \"test_press\"\ncompression_ratio = 0.5\nwindow_size = {value}\n");
        let error = toml_error(&text);
        let ConfigError::Field {
            press,
            field,
            line,
            message,
        } = &error
        else {
            panic!("{value}: {error:?}");
        };
        assert_eq!(
            (press.as_str(), field.as_str()),
            ("test_press", "window_size")
        );
        assert_eq!(*line, Some(3));
        assert!(message.contains("u32"), "{message}");
    }
}

#[test]
fn wrong_types_and_unknown_fields_name_the_field_even_nested() {
    let error = json_error(
        r#"{"press": "test_wrapper", "inner": {"press": "test_press", "compression_ratio": "half", "window_size": 2}}"#,
    );
    let ConfigError::Field { press, field, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        (press.as_str(), field.as_str()),
        ("test_press", "inner.compression_ratio")
    );
    let error = toml_error("press = \"test_press\"\nwindow = 3\n");
    assert!(
        matches!(&error, ConfigError::Field { field, .. } if field == "window"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("unknown field `window`"), "{message}");
    assert!(message.contains("window_size"), "{message}");
}

#[test]
fn non_objects_say_a_config_is_a_table_with_a_press_field() {
    for (text, found) in [
        ("[1, 2]", "an array"),
        ("3", "a number"),
        ("\"knorm\"", "a string"),
    ] {
        let error = json_error(text);
        assert!(
            matches!(&error, ConfigError::NotATable { found: f, .. } if *f == found),
            "{text}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("with a `press` field"), "{message}");
        assert!(
            message.contains("test_press"),
            "registered names listed: {message}"
        );
        assert!(!message.contains("dyn Press"), "{message}");
    }
    let error = build_press(serde_json::json!(null)).unwrap_err();
    assert!(matches!(
        error,
        ConfigError::NotATable { found: "null", .. }
    ));
}

#[test]
fn missing_and_misnamed_presses_list_the_registered_names() {
    let error = json_error(r#"{"compression_ratio": 0.5}"#);
    assert!(
        matches!(error, ConfigError::MissingPress { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("test_press"));
    let error = json_error(r#"{"press": "tset_press"}"#);
    assert!(
        matches!(&error, ConfigError::UnknownPress { name, .. } if name == "tset_press"),
        "{error:?}"
    );
    let error = json_error(r#"{"press": 3}"#);
    assert!(
        matches!(error, ConfigError::PressNotAName { .. }),
        "{error:?}"
    );
}

#[test]
fn empty_configs_say_what_a_config_is() {
    for text in ["", "  \n\t\n"] {
        for format in [ConfigFormat::Json, ConfigFormat::Toml] {
            let error = parse_press_config(text, format).unwrap_err();
            assert!(matches!(error, ConfigError::Empty { .. }), "{error:?}");
            assert!(error.to_string().contains("`press` field"), "{error}");
        }
    }
}

#[test]
fn a_file_in_the_other_format_says_to_rename_it() {
    let dir = tempfile_dir();
    let toml_text = "press = \"test_press\"\ncompression_ratio = 0.5\nwindow_size = 4\n";
    let json_text = r#"{"press": "test_press", "compression_ratio": 0.5, "window_size": 4}"#;
    for (name, text, named, holds) in [
        (
            "toml_in.json",
            toml_text,
            ConfigFormat::Json,
            ConfigFormat::Toml,
        ),
        (
            "json_in.toml",
            json_text,
            ConfigFormat::Toml,
            ConfigFormat::Json,
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let error = read_press_config(&path).unwrap_err();
        let ConfigError::InFile { error: inner, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            matches!(**inner, ConfigError::WrongFormat { named: n, holds: h } if n == named && h == holds),
            "{inner:?}"
        );
        let message = error.to_string();
        assert!(message.contains(name), "names the file: {message}");
        assert!(
            message.contains(&format!("rename it to .{}", holds.extension())),
            "{message}"
        );
    }
}

#[test]
fn file_errors_name_the_path() {
    let dir = tempfile_dir();
    let missing = dir.join("missing.toml");
    let error = read_press_config(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.toml"), "{error}");
    let text = dir.join("press.txt");
    std::fs::write(&text, "press = \"test_press\"").unwrap();
    let error = read_press_config(&text).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Extension { extension: Some(e), .. } if e == "txt"),
        "{error:?}"
    );
    assert!(error.to_string().contains(".json or .toml"), "{error}");
    // The crate's error keeps the message (and the path).
    let message = press_from_file(&missing).unwrap_err().to_string();
    assert!(message.contains("missing.toml"), "{message}");
}

#[test]
fn validate_errors_keep_their_own_variant() {
    let error = toml_error("press = \"test_press\"\ncompression_ratio = 1.5\nwindow_size = 4\n");
    assert!(matches!(error, ConfigError::Press(_)), "{error:?}");
    let error: kvpress_core::Error =
        press_from_toml("press = \"test_press\"\ncompression_ratio = 1.5\nwindow_size = 4\n")
            .unwrap_err();
    assert!(
        !matches!(error, kvpress_core::Error::Config(_)),
        "{error:?}"
    );
}

/// A fresh folder under the target directory's temp space.
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kvpress-core-config-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
