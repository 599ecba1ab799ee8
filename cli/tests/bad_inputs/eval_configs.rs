//! Eval grids that would run something other than they say, and dataset lines that would score
//! nonsense: refused before any work, naming the field, the line and what is valid.

use crate::files::text;
use crate::harness::{fails, succeeds, Case, File};

/// The fields before a grid's presses.
const BASE: &str =
    "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\n";

/// A grid with `press_fields` as its one press's `name` and `config`.
fn with_press(name: &str, config: &str) -> String {
    format!("{BASE}[[presses]]\nname = \"{name}\"\nconfig = {config}\n")
}

fn grid(config: &str, phrases: &[&str]) -> Case {
    fails(
        &["eval", "--config", "{dir}/grid.toml", "--out", "{dir}/out"],
        phrases,
    )
    .files([text("grid.toml", config)])
}

/// A dataset-only grid over `lines` (`--skip-bad` with `skip`).
fn dataset(lines: &[u8], skip: bool, phrases: &[&str]) -> Case {
    let mut args = vec!["eval", "--config", "{dir}/grid.toml", "--out", "{dir}/out"];
    if skip {
        args.push("--skip-bad");
    }
    fails(&args, phrases).files([
        text(
            "grid.toml",
            "dataset = \"{dir}/data.jsonl\"\ncompression_ratios = [0.5]\npresses = []\n",
        ),
        ("data.jsonl".to_string(), File::Bytes(lines.to_vec())),
    ])
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let good = b"{\"context\": \"The code is 7. The grass is green.\", \"question\": \"What is the code?\", \"answer\": \"7\"}\n";
    vec![
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [0]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["context length 0 holds no task"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = []\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["context_lengths is empty"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256, 256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["context_lengths lists 256 twice"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [10]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["context length 10 is too short for task `niah_single`", "use context lengths of at least"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [8190]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["task `niah_single` at context length 8190: the prompt needs", "the longest context length whose samples all fit is"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [18446744073709551615]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["the longest context length whose samples all fit is"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\nmax_new_tokens = 9000\npresses = []\n", &["no context length of this task fits: lower max_new_tokens"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = []\npresses = []\n", &["compression_ratios is empty, which would drop every press"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [nan]\npresses = []\n", &["compression ratio NaN is outside [0, 1)"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [1.0]\npresses = []\n", &["compression ratio 1 is outside [0, 1)"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [-0.25]\npresses = []\n", &["compression ratio -0.25 is outside [0, 1)"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5, 0.5001]\npresses = []\n", &["is given twice (rows are keyed by the ratio to the thousandth"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 0\ncompression_ratios = [0.5]\npresses = []\n", &["samples = 0", "give at least 1"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\ncompression_ratios = [0.5]\npresses = []\n", &["no `samples`"]),
        grid("tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 18446744073709551615\ncompression_ratios = [0.5]\npresses = []\n", &["give at most 10000"]),
        grid("tasks = [\"niah\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["unknown task `niah`: valid are niah_single"]),
        grid("tasks = [\"niah_single\", \"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["tasks lists \"niah_single\" twice"]),
        grid("tasks = []\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n", &["names no task and no dataset"]),
        grid("compression_ratios = [0.5]\npresses = []\n", &["names no task and no dataset"]),
        grid(&format!("{BASE}presses = []\nsettings = []\n"), &["settings is empty"]),
        grid(&format!("{BASE}presses = []\nsettings = [\"question_aware\", \"question_aware\"]\n"), &["settings lists"]),
        grid(&format!("{BASE}presses = []\nsettings = [\"aware\"]\n"), &["not a valid eval config", "question_agnostic"]),
        grid(&format!("{BASE}presses = []\nmax_new_tokens = 0\n"), &["max_new_tokens = 0 would score empty answers"]),
        grid(&format!("{BASE}presses = []\nbogus = 1\n"), &["not a valid eval config", "unknown field `bogus`"]),
        grid("tasks = \"niah_single\"\n", &["not a valid eval config", "line 1"]),
        grid("tasks = [\n", &["not a valid eval config"]),
        // Presses of the grid.
        grid(&format!("{BASE}[[presses]]\nname = \"k\"\nconfig = {{ press = \"knorm\" }}\n[[presses]]\nname = \"k\"\nconfig = {{ press = \"tova\" }}\n"), &["two presses are named `k`"]),
        grid(&with_press("k", "{ press = \"knorm\", compression_ratio = 0.3 }"), &["press `k` sets `config.compression_ratio`, but the grid sets every press's ratio"]),
        grid(&with_press("k", "{ press = \"adakv\", inner = { press = \"snapkv\", compression_ratio = 0.3 } }"), &["press `k` sets `config.inner.compression_ratio`"]),
        grid(&with_press("a|b", "{ press = \"knorm\" }"), &["the press name \"a|b\" holds '|'", "table.md"]),
        grid(&with_press("a<b>", "{ press = \"knorm\" }"), &["holds '<'"]),
        grid(&with_press("", "{ press = \"knorm\" }"), &["a press cannot be named ``"]),
        grid(&with_press("full cache", "{ press = \"knorm\" }"), &["a press cannot be named `full cache`"]),
        grid(&with_press("n", "{ press = \"no_press\" }"), &["`no_press` cannot run in `eval`: it never compresses"]),
        grid(&with_press("n", "{ press = \"nope\" }"), &["press `n` at ratio 0.5", "unknown press `nope`; registered presses are:"]),
        grid(&with_press("n", "{ press = \"snapkv\", window_size = 0 }"), &["press `n` at ratio 0.5", "window_size must be at least 1"]),
        grid(&with_press("n", "{ press = \"knorm\", ratio = 0.5 }"), &["unknown field `ratio`"]),
        grid(&with_press("n", "{ press = \"observed_attention\" }"), &[]).expect_success(),
        // Datasets: their lines, and the fields that only shape generated tasks.
        grid("dataset = \"{dir}/none.jsonl\"\ncompression_ratios = [0.5]\npresses = []\n", &["cannot read {dir}/none.jsonl"]),
        grid("dataset = \"{dir}/d.jsonl\"\ncontext_lengths = [256]\ncompression_ratios = [0.5]\npresses = []\n", &["context_lengths apply to generated tasks only; every dataset line is evaluated once"]),
        grid("dataset = \"{dir}/d.jsonl\"\nsamples = 2\ncompression_ratios = [0.5]\npresses = []\n", &["samples apply to generated tasks only"]),
        dataset(b"{\"context\": \"c\", \"question\": \"q\", \"answer\": 7}\n", false, &["data.jsonl:1:", "`answer` must be a string or a list of strings, found a number", "--skip-bad"]),
        dataset(b"{\"context\": \"c\", \"question\": \"q\", \"answer\": [\"7\", 8]}\n", false, &["data.jsonl:1:", "`answer` must be a string or a list of strings, found a number"]),
        dataset(b"[\"context\", \"question\"]\n", false, &["data.jsonl:1: a line must be a JSON object", "found a list"]),
        dataset(b"{\"contxt\": \"c\", \"question\": \"q\", \"answer\": \"7\"}\n", false, &["data.jsonl:1: unknown key `contxt`"]),
        dataset(b"{\"context\": \"c\", \"question\": \"q\", \"answer\": \"\"}\n", false, &["question 0 expects an empty answer"]),
        dataset(b"{\"context\": \"c\", \"question\": \"q\", \"answer\": []}\n", false, &["question 0 expects an empty answer"]),
        dataset(b"{\"context\": \"c\", \"questions\": [\"a\", \"b\"], \"answers\": [\"1\"]}\n", false, &["2 questions but 1 answers"]),
        dataset(b"{\"context\": \"c\", \"answer\": \"1\"}\n", false, &["give `question` with `answer`"]),
        dataset(b"{\"context\": \"  \", \"question\": \"q\", \"answer\": \"1\"}\n", false, &["`context` is missing or empty"]),
        dataset(b"{\"question\": \"q\", \"answer\": \"1\"}\n", false, &["`context` is missing or empty"]),
        dataset(b"{\"context\": 5, \"question\": \"q\", \"answer\": \"1\"}\n", false, &["`context` must be a string, found a number"]),
        dataset(b"{\"context\": \"c\xff\", \"question\": \"q\", \"answer\": \"1\"}\n", false, &["data.jsonl:1: not UTF-8 text (invalid byte at column 15)"]),
        dataset(b"{\"context\": \"c\",\n", false, &["data.jsonl:1: not JSON:"]),
        dataset(&[good.as_slice(), b"{oops}\n"].concat(), false, &["data.jsonl:2: not JSON:"]),
        dataset(&[b"{\"context\": \"", "word ".repeat(9000).as_bytes(), b"\", \"question\": \"q\", \"answer\": \"1\"}\n"].concat(), false, &["data.jsonl:1: the prompt needs", "the model has 8192"]),
        dataset(b"{oops}\n[1]\n", true, &["holds no usable line (2 skipped with --skip-bad", "data.jsonl:1: not JSON", "data.jsonl:2: a line must be a JSON object"]),
        dataset(b"\n  \n", false, &["holds no usable line"]),
        // A byte-order mark before the first line is not part of it.
        dataset(&[b"\xef\xbb\xbf".as_slice(), good].concat(), false, &[]).expect_success(),
    ]
}

impl Case {
    /// This case must succeed instead (a grid that runs), writing its results.
    fn expect_success(self) -> Self {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Case {
            files: self.files.clone(),
            ..succeeds(&args, &["results in"])
        }
        .check(
            |dir, _| match std::fs::read_to_string(dir.join("out/results.jsonl")) {
                Ok(rows) if !rows.trim().is_empty() => Ok(()),
                other => Err(format!("no results rows: {other:?}")),
            },
        )
    }
}
