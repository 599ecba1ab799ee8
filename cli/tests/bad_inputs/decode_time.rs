//! Presses that compress while tokens are generated (`decoding`, `compression_ratio_decoding`,
//! `prefill_decoding`, and `composed` holding one), through every front end: `run`, `compress` +
//! `run --load` and `generate` run them and say how often they compressed; `eval`, `fidelity`,
//! `inspect`, `trace` and `bench --press` refuse them naming the press and the command. Presses
//! owning their ratios (`per_layer`, `composed`) are refused by `eval` only.

use crate::files::{inputs, text, PRESS_COMMANDS};
use crate::harness::{fails, succeeds, Case};

/// `(file, config)` of each decode-time press, compressing every 4 generated tokens.
#[rustfmt::skip]
const DECODE_TIME: &[(&str, &str, &str)] = &[
    ("decoding.toml", "decoding", "press = \"decoding\"\ncompression_interval = {interval}\ntarget_size = 16\nhidden_states_buffer_size = 4\n[inner]\npress = \"knorm\"\n"),
    ("ratio.toml", "compression_ratio_decoding", "press = \"compression_ratio_decoding\"\ncompression_interval = {interval}\ntarget_compression_ratio = 0.5\nhidden_states_buffer_size = 4\n[inner]\npress = \"knorm\"\n"),
    ("prefill.toml", "prefill_decoding", "press = \"prefill_decoding\"\n[prefilling]\npress = \"knorm\"\ncompression_ratio = 0.5\n[decoding]\npress = \"decoding\"\ncompression_interval = {interval}\ntarget_size = 16\nhidden_states_buffer_size = 4\n[decoding.inner]\npress = \"knorm\"\n"),
    ("composed.toml", "composed", "press = \"composed\"\n[[presses]]\npress = \"knorm\"\ncompression_ratio = 0.5\n[[presses]]\npress = \"decoding\"\ncompression_interval = {interval}\ntarget_size = 16\nhidden_states_buffer_size = 4\n[presses.inner]\npress = \"knorm\"\n"),
];

/// `config` compressing every `interval` tokens fed after the context.
fn every(config: &str, interval: usize) -> String {
    config.replace("{interval}", &interval.to_string())
}

/// Commands that only compress the prefill.
const PREFILL_ONLY: &[&str] = &["fidelity", "inspect", "trace", "bench"];

/// An eval grid of one tiny sample with `config` as its press.
fn grid(config: &str) -> String {
    format!(
        "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\n\
         compression_ratios = [0.5]\n[[presses]]\nname = \"p\"\nconfig = {config}\n"
    )
}

/// The TOML config `config` as an inline table (for eval grids).
pub fn inline(config: &str) -> String {
    fn write(value: &toml::Value) -> String {
        match value {
            toml::Value::Table(table) => {
                let fields: Vec<String> = table
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", write(v)))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }
            toml::Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(write).collect::<Vec<_>>().join(", ")
                )
            }
            other => other.to_string(),
        }
    }
    write(&toml::Value::Table(toml::from_str(config).unwrap()))
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let ran = "decode-time compression ran";
    for &(file, name, template) in DECODE_TIME {
        let config = &every(template, 4);
        let press = format!("{{dir}}/{file}");
        for command in PRESS_COMMANDS
            .iter()
            .filter(|c| PREFILL_ONLY.contains(&c.name))
        {
            let refusal = format!("`{name}` cannot run in `{}`", command.name);
            cases.push(
                fails(
                    &command.with_press(&press),
                    &[
                        &refusal,
                        "compresses while tokens are generated",
                        "use it with run, compress or generate",
                    ],
                )
                .files(inputs())
                .files([text(file, config)]),
            );
        }
        // run: long answers compress, short ones say they did not.
        let run = [
            "run",
            "--context",
            "{dir}/ctx.txt",
            "--question",
            "Count from 1 to 30.",
            "--press",
            &press,
        ];
        cases.push(
            succeeds(
                &[&run[..], &["--max-new-tokens", "12"]].concat(),
                &[ran, "during this answer"],
            )
            .files(inputs())
            .files([text(file, config)]),
        );
        cases.push(
            succeeds(&[&run[..], &["--max-new-tokens", "2"]].concat(), &["decode-time compression did not run: the question's forward and one forward per generated token were fewer than the press's compression_interval"])
                .files(inputs())
                .files([text(file, &every(template, 64))]),
        );
        // A saved context keeps its press, which runs while answering.
        cases.push(
            succeeds(
                &[
                    "run",
                    "--load",
                    "{dir}/c.kvp",
                    "--question",
                    "Count from 1 to 30.",
                    "--max-new-tokens",
                    "12",
                ],
                &[ran, &format!("\"press\":\"{name}\"")],
            )
            .files(inputs())
            .files([text(file, config)])
            .after(&[
                "compress",
                "--context",
                "{dir}/ctx.txt",
                "--press",
                &press,
                "--out",
                "{dir}/c.kvp",
            ]),
        );
        cases.push(
            succeeds(
                &[
                    "generate",
                    "--prompt",
                    "Count from 1 to 30.",
                    "--max-new-tokens",
                    "12",
                    "--press",
                    &press,
                ],
                &["press: decode-time compression ran"],
            )
            .files([text(file, config)]),
        );
        cases.push(
            fails(
                &["eval", "--config", "{dir}/grid.toml", "--out", "{dir}/out"],
                &[
                    &format!("`{name}` cannot run in `eval`"),
                    "compresses while tokens are generated",
                ],
            )
            .files([text("grid.toml", &grid(&inline(config)))]),
        );
    }
    // bench --generate is the measurement made for decode-time presses.
    cases.push(
        succeeds(
            &[
                "bench",
                "--generate",
                "24",
                "--press",
                "{dir}/decoding.toml",
            ],
            &["ms/token"],
        )
        .files([text(DECODE_TIME[0].0, &every(DECODE_TIME[0].2, 4))]),
    );
    cases.extend(own_ratios());
    cases.extend(nested());
    cases
}

/// Decode-time presses inside wrappers that do not pass their schedule on would never compress:
/// refused by every command; so are inner presses a schedule cannot drive.
#[rustfmt::skip]
fn nested() -> Vec<Case> {
    let decoding = "{\"press\": \"decoding\", \"compression_interval\": 4, \"target_size\": 16, \"inner\": {\"press\": \"knorm\"}}";
    let wrapped = [
        ("rerotated.json", format!("{{\"press\": \"key_rerotation\", \"inner\": {decoding}}}"), "`key_rerotation` holds `decoding`"),
        ("chunked.json", format!("{{\"press\": \"chunk\", \"chunk_length\": 64, \"inner\": {decoding}}}"), "chunk: inner must be a scoring press"),
        ("deep.json", format!("{{\"press\": \"composed\", \"presses\": [{{\"press\": \"knorm\", \"compression_ratio\": 0.1}}, {{\"press\": \"key_rerotation\", \"inner\": {decoding}}}]}}"), "`key_rerotation` holds `decoding`"),
    ];
    let mut cases = Vec::new();
    for (file, config, phrase) in &wrapped {
        for command in PRESS_COMMANDS {
            cases.push(
                fails(&command.with_press(&format!("{{dir}}/{file}")), &[phrase])
                    .files(inputs())
                    .files([text(file, config)]),
            );
        }
    }
    let inner = |inner: &str| format!("{{\"press\": \"decoding\", \"compression_interval\": 4, \"target_size\": 16, \"inner\": {inner}}}");
    for (config, phrase) in [
        (inner("{\"press\": \"no_press\"}"), "the inner press `no_press` cannot compress while decoding: it cannot run at the ratio the schedule sets"),
        (inner(decoding), "the inner press `decoding` cannot compress while decoding: it compresses while decoding itself"),
        (inner("{\"press\": \"observed_attention\"}"), "it needs attention weights, which decoding steps do not compute"),
        (inner("{\"press\": \"key_rerotation\", \"inner\": {\"press\": \"knorm\"}}"), "it re-rotates keys"),
        (inner("{\"press\": \"per_layer\", \"compression_ratios\": [0.5], \"inner\": {\"press\": \"knorm\"}}"), "it cannot run at the ratio the schedule sets"),
        (format!("{{\"press\": \"prefill_decoding\", \"prefilling\": {decoding}}}"), "`prefilling` must compress the prefill only"),
        ("{\"press\": \"key_rerotation\", \"inner\": {\"press\": \"key_rerotation\", \"inner\": {\"press\": \"knorm\", \"compression_ratio\": 0.5}}}".to_string(), "re-rotates keys already"),
    ] {
        cases.push(
            fails(&["generate", "--prompt", "hi", "--press", "{dir}/bad.json"], &[phrase])
                .files([text("bad.json", &config)]),
        );
        cases.push(
            fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--press", "{dir}/bad.json"], &[phrase])
                .files(inputs())
                .files([text("bad.json", &config)]),
        );
    }
    cases
}

/// Presses that set their own ratios: the grid cannot set them, every other command runs them.
fn own_ratios() -> Vec<Case> {
    let per_layer = format!(
        "press = \"per_layer\"\ncompression_ratios = [{}]\n[inner]\npress = \"knorm\"\n",
        vec!["0.5"; 30].join(", ")
    );
    let composed = "press = \"composed\"\n[[presses]]\npress = \"knorm\"\ncompression_ratio = 0.5\n[[presses]]\npress = \"tova\"\ncompression_ratio = 0.5\n";
    let dms = "press = \"dms\"\nthreshold = -18.75\n[inner]\npress = \"knorm\"\n";
    let mut cases = Vec::new();
    for (file, name, config) in [
        ("per_layer.toml", "per_layer", per_layer.as_str()),
        ("composed.toml", "composed", composed),
        ("dms.toml", "dms", dms),
    ] {
        cases.push(
            fails(
                &["eval", "--config", "{dir}/grid.toml", "--out", "{dir}/out"],
                &[
                    &format!("`{name}` cannot run in `eval`"),
                    "sets its own compression ratios",
                ],
            )
            .files([text("grid.toml", &grid(&inline(config)))]),
        );
        cases.push(
            succeeds(
                &[
                    "run",
                    "--context",
                    "{dir}/long.txt",
                    "--question",
                    "What is the code?",
                    "--max-new-tokens",
                    "4",
                    "--press",
                    &format!("{{dir}}/{file}"),
                ],
                &["context: "],
            )
            .files(inputs())
            .files([text(file, config)]),
        );
        cases.push(
            succeeds(
                &[
                    "fidelity",
                    "--text",
                    "{dir}/long.txt",
                    "--continuation",
                    "16",
                    "--press",
                    &format!("{{dir}}/{file}"),
                ],
                &["KL"],
            )
            .files(inputs())
            .files([text(file, config)]),
        );
    }
    // A per_layer press needs one ratio per layer of the model.
    cases.push(
        fails(
            &[
                "run",
                "--context",
                "{dir}/ctx.txt",
                "--question",
                "q",
                "--press",
                "{dir}/short.toml",
            ],
            &["per_layer: the model has 30 layers but compression_ratios has 1 entries"],
        )
        .files(inputs())
        .files([text(
            "short.toml",
            "press = \"per_layer\"\ncompression_ratios = [0.5]\n[inner]\npress = \"knorm\"\n",
        )]),
    );
    // Two decode-time presses in one composed press.
    cases.push(
        fails(
            &[
                "run",
                "--context",
                "{dir}/ctx.txt",
                "--question",
                "q",
                "--press",
                "{dir}/two.toml",
            ],
            &["composed: more than one press compresses while decoding"],
        )
        .files(inputs())
        .files([text(
            "two.toml",
            &format!(
                "press = \"composed\"\n{}",
                [DECODE_TIME[0].2, DECODE_TIME[0].2]
                    .map(|c| format!(
                        "[[presses]]\n{}",
                        every(c, 4).replace("[inner]", "[presses.inner]")
                    ))
                    .concat()
            ),
        )]),
    );
    cases
}
