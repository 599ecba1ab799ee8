//! The files cases create, and the argument lists of every command that reads a press config.

use crate::harness::File;

/// A text file `name` holding `text`.
pub fn text(name: &str, text: &str) -> (String, File) {
    (name.to_string(), File::Text(text.to_string()))
}

/// A short context.
pub fn ctx() -> (String, File) {
    text("ctx.txt", "The launch code is 2718. Keep it safe.")
}

/// A context of about 250 tokens (enough for fidelity's continuation and a few presses' windows).
pub fn long_ctx() -> (String, File) {
    (
        "long.txt".to_string(),
        File::Repeat(
            "The grass is green. The sky is blue. The launch code is 2718. ".to_string(),
            20,
        ),
    )
}

/// KNorm at ratio 0.5.
pub fn knorm() -> (String, File) {
    text("knorm.toml", "press = \"knorm\"\ncompression_ratio = 0.5\n")
}

/// A trace prompt.
pub fn prompt() -> (String, File) {
    text(
        "prompt.json",
        "{\"context\": \"The code is 7. The grass is green.\", \"question\": \" What is the code?\"}",
    )
}

/// The files every press-reading command needs besides the press: a context, a long context
/// (fidelity) and a trace prompt.
pub fn inputs() -> Vec<(String, File)> {
    vec![ctx(), long_ctx(), prompt()]
}

/// A command that reads a press config (`{press}` in its arguments).
pub struct PressCommand {
    /// The command's name.
    pub name: &'static str,
    /// Its arguments, `{press}` standing for the config's path.
    pub args: &'static [&'static str],
}

/// Every command that reads a press config from a file.
pub const PRESS_COMMANDS: &[PressCommand] = &[
    PressCommand {
        name: "run",
        args: &[
            "run",
            "--context",
            "{dir}/ctx.txt",
            "--question",
            "What is the code?",
            "--max-new-tokens",
            "4",
            "--press",
            "{press}",
        ],
    },
    PressCommand {
        name: "compress",
        args: &[
            "compress",
            "--context",
            "{dir}/ctx.txt",
            "--press",
            "{press}",
            "--out",
            "{dir}/c.kvp",
        ],
    },
    PressCommand {
        name: "fidelity",
        args: &[
            "fidelity",
            "--text",
            "{dir}/long.txt",
            "--continuation",
            "16",
            "--press",
            "{press}",
        ],
    },
    PressCommand {
        name: "inspect",
        args: &[
            "inspect",
            "--context",
            "{dir}/ctx.txt",
            "--press",
            "{press}",
            "--out",
            "{dir}/pictures",
        ],
    },
    PressCommand {
        name: "trace",
        args: &[
            "trace",
            "--prompt",
            "{dir}/prompt.json",
            "--press",
            "{press}",
            "--out",
            "{dir}/t.json",
        ],
    },
    PressCommand {
        name: "bench",
        args: &[
            "bench",
            "--context",
            "64",
            "--repeats",
            "1",
            "--decode-tokens",
            "2",
            "--press",
            "{press}",
        ],
    },
    PressCommand {
        name: "generate",
        args: &[
            "generate",
            "--prompt",
            "Say hi.",
            "--max-new-tokens",
            "4",
            "--press",
            "{press}",
        ],
    },
];

impl PressCommand {
    /// The arguments with `press` for `{press}`.
    pub fn with_press(&self, press: &str) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.replace("{press}", press))
            .collect()
    }
}
