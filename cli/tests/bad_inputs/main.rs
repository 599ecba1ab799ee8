//! Bad inputs, across every command of the `kvpress` binary: each case runs the binary with
//! arguments, environment variables and files that are wrong (or odd but valid) and states what
//! it must do: fail with a message naming the problem and what is valid (never a panic, never a
//! silent wrong result), or succeed with the right result (checked). One test per group, so that
//! groups run in parallel; each prints its count of cases.
//!
//! Cases are lines in the group modules; [`harness`] runs them (`{dir}` is a fresh folder per
//! case, `{repo}` the repository). Most fail before the model is loaded and take milliseconds.

mod decode_time;
mod environment;
mod eval_configs;
mod files;
mod harness;
mod models;
mod numbers;
mod paths;
mod press_configs;
mod prompts;
mod saved_contexts;
mod stop_reasons;

use harness::run_all;

#[test]
fn press_configs_are_refused_by_every_command_naming_the_field() {
    run_all("press configs", &press_configs::cases());
}

#[test]
fn decode_time_presses_run_or_are_refused_on_every_path() {
    run_all("decode-time presses", &decode_time::cases());
}

#[test]
fn numeric_options_are_checked_against_their_range() {
    run_all("numbers", &numbers::cases());
}

#[test]
fn inputs_and_outputs_name_their_paths_and_outputs_never_overwrite_inputs() {
    run_all("paths", &paths::cases());
}

#[test]
fn environment_variables_are_checked_at_start() {
    run_all("environment", &environment::cases());
}

#[test]
fn models_and_dtypes_are_checked() {
    run_all("models", &models::cases());
}

#[test]
fn empty_and_unreadable_texts_are_refused() {
    run_all("prompts", &prompts::cases());
}

#[test]
fn eval_grids_and_datasets_are_checked_before_any_work() {
    run_all("eval configs", &eval_configs::cases());
}

#[test]
fn saved_contexts_are_checked_when_loaded() {
    run_all("saved contexts", &saved_contexts::cases());
}

#[test]
fn answers_say_why_they_stopped() {
    run_all("stop reasons", &stop_reasons::cases());
}

#[test]
fn the_suite_covers_every_command_with_at_least_300_cases() {
    let groups = [
        press_configs::cases(),
        decode_time::cases(),
        numbers::cases(),
        paths::cases(),
        environment::cases(),
        models::cases(),
        prompts::cases(),
        eval_configs::cases(),
        saved_contexts::cases(),
        stop_reasons::cases(),
    ];
    let all: Vec<&harness::Case> = groups.iter().flatten().collect();
    let mut per_command = std::collections::BTreeMap::<&str, usize>::new();
    for case in &all {
        let command = case.args.first().map_or("", String::as_str);
        *per_command.entry(command).or_default() += 1;
    }
    let refused = all
        .iter()
        .filter(|case| matches!(case.expect, harness::Expect::Fails(_)))
        .count();
    eprintln!(
        "{} cases ({refused} must be refused, {} must succeed with a checked result): \
         {per_command:?}",
        all.len(),
        all.len() - refused
    );
    for command in [
        "generate",
        "run",
        "compress",
        "eval",
        "fidelity",
        "inspect",
        "trace",
        "bench",
        "presses",
        "fetch-model",
    ] {
        assert!(
            per_command.contains_key(command),
            "no case runs `{command}`"
        );
    }
    assert!(all.len() >= 300, "{} cases", all.len());
}
