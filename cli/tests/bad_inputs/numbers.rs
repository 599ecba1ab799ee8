//! Numeric options of every command: negative numbers are read as values (not as options) and
//! every value is checked against its range, naming the option and what is valid.

use crate::files::{ctx, knorm, long_ctx, text};
use crate::harness::{fails, Case};

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        // generate
        fails(&["generate", "--prompt", "hi", "--max-new-tokens", "-1"], &["invalid value '-1' for '--max-new-tokens", "at least 1"]),
        fails(&["generate", "--prompt", "hi", "--max-new-tokens", "0"], &["0 is too small", "at least 1"]),
        fails(&["generate", "--prompt", "hi", "--max-new-tokens", "many"], &["not a whole number"]),
        fails(&["generate", "--prompt", "hi", "--max-new-tokens", "1.5"], &["not a whole number"]),
        fails(&["generate", "--prompt", "hi", "--max-new-tokens", "99999999999999999999999"], &["too large"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "-1"], &["invalid value '-1' for '--temperature", "temperature must be positive (or 0"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "nan"], &["temperature must be positive", "finite"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "inf"], &["temperature must be positive"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "1e400"], &["finite, got inf"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "0x10"], &["not a number"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "1.5"], &["1.5 is outside (0, 1]"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "0"], &["outside (0, 1]"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "nan"], &["NaN is outside (0, 1]"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "0.5", "--top-p", "-0.5"], &["invalid value '-0.5' for '--top-p", "outside (0, 1]"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "1", "--seed", "-3"], &["invalid value '-3' for '--seed", "it is negative", "0 to 18446744073709551615"]),
        fails(&["generate", "--prompt", "hi", "--temperature", "1", "--seed", "18446744073709551616"], &["0 to 18446744073709551615"]),
        fails(&["generate", "--prompt", "hi", "--seed", "3"], &["--temperature"]),
        fails(&["generate", "--prompt", "hi", "--top-p", "0.9"], &["--temperature"]),
        // run
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens", "-1"], &["invalid value '-1' for '--max-new-tokens", "at least 1"]),
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens", "0"], &["at least 1"]),
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens", "99999999999999999999"], &["too large"]),
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q", "--max-new-tokens="], &["invalid value '' for '--max-new-tokens", "not a whole number"]),
        // fidelity
        fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--continuation", "-5"], &["invalid value '-5' for '--continuation", "at least 1"]),
        fails(&["fidelity", "--text", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--continuation", "0"], &["at least 1"]),
        fails(&["fidelity", "--text", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--continuation", "100000"], &["it needs more than --continuation (100000)"]),
        // bench
        fails(&["bench", "--decode-tokens", "0"], &["invalid value '0' for '--decode-tokens", "at least 1"]),
        fails(&["bench", "--decode-tokens", "-1"], &["it is negative"]),
        fails(&["bench", "--context", "64", "--decode-tokens", "100000"], &["--context 64 with --decode-tokens 100000 needs 100064 positions, more than the model's 8192"]),
        fails(&["bench", "--repeats", "0"], &["'--repeats", "at least 1"]),
        fails(&["bench", "--repeats", "-2"], &["it is negative"]),
        fails(&["bench", "--repeats", "1.5"], &["not a whole number"]),
        fails(&["bench", "--context", "-1"], &["invalid value '-1' for '--context", "at least 1"]),
        fails(&["bench", "--context", "0"], &["at least 1"]),
        fails(&["bench", "--context", "1024,0"], &["0 is too small"]),
        fails(&["bench", "--context", "1024,,2048"], &["invalid value '' for '--context"]),
        fails(&["bench", "--context", "abc"], &["not a whole number"]),
        fails(&["bench", "--context", "9000", "--repeats", "1"], &["--context 9000", "more than the model's 8192"]),
        fails(&["bench", "--generate", "0", "--press", "{dir}/knorm.toml"], &["'--generate", "at least 1"]),
        fails(&["bench", "--generate", "-5", "--press", "{dir}/knorm.toml"], &["it is negative"]),
        fails(&["bench", "--generate", "9000", "--press", "{repo}/configs/presses/decoding_snapkv.toml"], &["--generate 9000 needs 9032 positions", "at most --generate 8160"]),
        fails(&["bench", "--batch", "0", "--press", "{dir}/knorm.toml"], &["'--batch", "at least 1"]),
        fails(&["bench", "--batch", "-1", "--press", "{dir}/knorm.toml"], &["it is negative"]),
        fails(&["bench", "--batch", "3", "--context", "150", "--press", "{dir}/knorm.toml"], &["--batch 3 needs --context above 192", "got --context 150"]),
        // bench modes that would measure nothing or ignore an option.
        fails(&["bench", "--generate", "10"], &["--press"]),
        fails(&["bench", "--batch", "2"], &["--press"]),
        fails(&["bench", "--append-cost", "--press", "{dir}/knorm.toml"], &["cannot be used with"]),
        fails(&["bench", "--append-cost", "--decode-tokens", "4"], &["cannot be used with"]),
        fails(&["bench", "--generate", "10", "--batch", "2", "--press", "{dir}/knorm.toml"], &["cannot be used with"]),
        fails(&["bench", "--batch", "2", "--context", "128,256", "--press", "{dir}/knorm.toml"], &["one --context"]),
        // eval
        fails(&["eval", "--config", "{dir}/eval.toml", "--jobs", "-1"], &["invalid value '-1' for '--jobs"]),
        fails(&["eval", "--config", "{dir}/eval.toml", "--jobs", "0"], &["0 is too small", "at least 1"]),
        fails(&["eval", "--config", "{dir}/eval.toml", "--settings", "bogus"], &["invalid value 'bogus' for '--settings", "question_agnostic, question_aware"]),
    ];
    for case in &mut cases {
        *case = case.clone().files([ctx(), long_ctx(), knorm(), text("eval.toml", "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n")]);
    }
    cases
}
