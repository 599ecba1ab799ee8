//! Press configs that are wrong, through every command that reads one: each must be refused
//! naming the file, the press, the field (and its line where the format has lines) and what is
//! valid.

use crate::files::{inputs, text, PRESS_COMMANDS};
use crate::harness::{fails, Case, File};

/// A bad config: its file name, its text, and the phrases the refusal must hold.
struct BadConfig {
    file: &'static str,
    text: &'static str,
    phrases: &'static [&'static str],
}

#[rustfmt::skip]
const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig { file: "nan.toml", text: "press = \"knorm\"\ncompression_ratio = nan\n", phrases: &["nan.toml", "field `compression_ratio` (line 2) is nan", "finite"] },
    BadConfig { file: "inf.toml", text: "press = \"knorm\"\ncompression_ratio = -inf\n", phrases: &["field `compression_ratio` (line 2) is -inf"] },
    BadConfig { file: "big.toml", text: "press = \"snapkv\"\nwindow_size = 99999999999999999999\n", phrases: &["not valid TOML (line 2)", "does not fit in a 64-bit integer"] },
    BadConfig { file: "neg.toml", text: "press = \"snapkv\"\nwindow_size = -1\n", phrases: &["press `snapkv`, field `window_size` (line 2)", "usize"] },
    BadConfig { file: "array.json", text: "[{\"press\": \"knorm\"}]", phrases: &["must be a table (TOML) or object (JSON) with a `press` field", "found an array", "knorm"] },
    BadConfig { file: "empty.toml", text: "", phrases: &["the config is empty", "`press` field"] },
    BadConfig { file: "knorm.json", text: "press = \"knorm\"\ncompression_ratio = 0.5\n", phrases: &["named .json but holds TOML", "rename it to .toml"] },
    BadConfig { file: "json.toml", text: "{\"press\": \"knorm\", \"compression_ratio\": 0.5}", phrases: &["named .toml but holds JSON", "rename it to .json"] },
    BadConfig { file: "knorm.txt", text: "press = \"knorm\"\n", phrases: &["must end in .json or .toml", "not .txt"] },
    BadConfig { file: "number.toml", text: "press = 3\n", phrases: &["\"press\" must be a press name", "knorm"] },
    BadConfig { file: "noname.toml", text: "compression_ratio = 0.5\n", phrases: &["missing field `press`", "knorm"] },
    BadConfig { file: "unknown.toml", text: "press = \"snap_kv\"\n", phrases: &["unknown press `snap_kv`; registered presses are:", "snapkv"] },
    BadConfig { file: "field.toml", text: "press = \"knorm\"\nratio = 0.5\n", phrases: &["field `ratio` (line 2)", "unknown field `ratio`", "compression_ratio"] },
    BadConfig { file: "nested.toml", text: "press = \"key_rerotation\"\n[inner]\npress = \"knorm\"\ncompression_ratio = \"half\"\n", phrases: &["press `knorm`, field `inner.compression_ratio`", "f64"] },
    BadConfig { file: "one.toml", text: "press = \"knorm\"\ncompression_ratio = 1.0\n", phrases: &["compression_ratio 1 is outside [0, 1)", "0.5 keeps half"] },
    BadConfig { file: "below.toml", text: "press = \"knorm\"\ncompression_ratio = -0.1\n", phrases: &["compression_ratio -0.1 is outside [0, 1)"] },
    BadConfig { file: "seven.json", text: "{\"press\": \"tova\", \"compression_ratio\": 7}", phrases: &["tova: compression_ratio 7 is outside [0, 1)"] },
    BadConfig { file: "window.toml", text: "press = \"snapkv\"\ncompression_ratio = 0.5\nwindow_size = 0\n", phrases: &["snapkv: window_size must be at least 1"] },
    BadConfig { file: "kernel.toml", text: "press = \"pyramidkv\"\ncompression_ratio = 0.5\nkernel_size = 4\n", phrases: &["kernel_size 4 must be odd"] },
    BadConfig { file: "syntax.toml", text: "press = \n", phrases: &["syntax.toml", "not valid TOML", "line 1"] },
    BadConfig { file: "syntax.json", text: "{\"press\": \"knorm\",", phrases: &["not valid JSON", "line 1"] },
    BadConfig { file: "string.toml", text: "press = \"knorm\"\ncompression_ratio = \"half\"\n", phrases: &["field `compression_ratio` (line 2)", "expected f64"] },
    BadConfig { file: "noinner.toml", text: "press = \"key_rerotation\"\n", phrases: &["press `key_rerotation`: missing field `inner`"] },
    BadConfig { file: "nothing.toml", text: "press = \"composed\"\npresses = []\n", phrases: &["composed: `presses` is empty"] },
    BadConfig { file: "alpha.toml", text: "press = \"adakv\"\nalpha_safeguard = 2.0\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n", phrases: &["adakv: alpha_safeguard 2 is outside [0, 1]"] },
    BadConfig { file: "beta.toml", text: "press = \"pyramidkv\"\ncompression_ratio = 0.5\nbeta = 0\n", phrases: &["pyramidkv: beta 0 must be at least 1"] },
    BadConfig { file: "seed.toml", text: "press = \"random\"\ncompression_ratio = 0.5\nseed = -1\n", phrases: &["field `seed` (line 3)", "expected u64"] },
    BadConfig { file: "twice.toml", text: "press = \"knorm\"\npress = \"knorm\"\n", phrases: &["not valid TOML", "duplicate key"] },
    BadConfig { file: "epsilon.toml", text: "press = \"expected_attention\"\ncompression_ratio = 0.5\nepsilon = -1.0\n", phrases: &["expected_attention: epsilon -1 must be finite and non-negative"] },
    BadConfig { file: "chunk.toml", text: "press = \"chunk\"\nchunk_length = 0\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n", phrases: &["chunk: chunk_length must be at least 1"] },
    BadConfig { file: "stage.toml", text: "press = \"criticalkv\"\nfirst_stage_ratio = 1.5\n[inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n", phrases: &["criticalkv: first_stage_ratio 1.5 is outside [0, 1]"] },
    BadConfig { file: "interval.toml", text: "press = \"decoding\"\ncompression_interval = 0\ntarget_size = 16\n[inner]\npress = \"knorm\"\n", phrases: &["decoding: compression_interval and hidden_states_buffer_size must be at least 1"] },
    BadConfig { file: "inner.toml", text: "press = \"adakv\"\n[inner]\npress = \"nope\"\n", phrases: &["unknown press `nope`; registered presses are:"] },
    BadConfig { file: "adakv2.toml", text: "press = \"adakv\"\n[inner]\npress = \"adakv\"\n[inner.inner]\npress = \"snapkv\"\ncompression_ratio = 0.5\n", phrases: &["adakv needs a scoring press inside", "`adakv` does not score tokens"] },
    BadConfig { file: "dms_decoding.toml", text: "press = \"dms\"\nthreshold = -18.75\ndecoding = true\n[inner]\npress = \"observed_attention\"\n", phrases: &["dms: decoding = true scores every generated token", "`observed_attention` needs attention weights", "e.g. knorm"] },
    BadConfig { file: "dms_threshold.toml", text: "press = \"dms\"\n[inner]\npress = \"knorm\"\n", phrases: &["press `dms`", "missing field `threshold`"] },
    BadConfig { file: "dms_inner.toml", text: "press = \"dms\"\nthreshold = 0.0\n[inner]\npress = \"no_press\"\n", phrases: &["dms needs a scoring press inside", "`no_press` does not score tokens"] },
    BadConfig { file: "float.toml", text: "press = \"snapkv\"\ncompression_ratio = 0.5\nwindow_size = 1.5\n", phrases: &["field `window_size` (line 3)", "usize"] },
    BadConfig { file: "twice.json", text: "{\"press\": \"knorm\", \"compression_ratio\": 0.5, \"compression_ratio\": 0.9}", phrases: &["not valid JSON", "the key `compression_ratio` is given twice"] },
    BadConfig { file: "table.toml", text: "press = \"knorm\"\n[compression_ratio]\nvalue = 0.5\n", phrases: &["field `compression_ratio`", "expected f64"] },
];

/// Every bad config through every command that reads a press: refused before any work.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for bad in BAD_CONFIGS {
        for command in PRESS_COMMANDS {
            let args = command.with_press(&format!("{{dir}}/{}", bad.file));
            cases.push(
                fails(&args, bad.phrases)
                    .files(inputs())
                    .files([text(bad.file, bad.text)]),
            );
        }
    }
    // A config that is a folder, or missing, names the path.
    for command in PRESS_COMMANDS {
        cases.push(
            fails(
                &command.with_press("{dir}/missing.toml"),
                &["cannot read {dir}/missing.toml"],
            )
            .files(inputs()),
        );
        cases.push(
            fails(
                &command.with_press("{dir}/folder.toml"),
                &["{dir}/folder.toml"],
            )
            .files(inputs())
            .files([("folder.toml".to_string(), File::Folder)]),
        );
    }
    cases
}
