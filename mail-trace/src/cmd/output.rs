//! Output options shared by `replay` and `tail`.
use std::io::{IsTerminal, Write};

use crate::output::{jsonl::JsonLines, tail, Outputs};
use crate::proto::Privacy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainChoice {
    Always,
    Never,
}

#[derive(Clone, Debug, clap::Args)]
pub struct OutputArgs {
    /// JSON lines: one `session` record per finished session (see docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// With --json: also one record per command and reply as they happen.
    #[arg(long, requires = "json")]
    pub events: bool,
    /// One line per finished session.
    #[arg(long, conflicts_with = "json")]
    pub summary: bool,
    /// Colour the tail: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Explain failure replies in plain English beside them: always (the default) or never.
    #[arg(long, value_enum, default_value_t = ExplainChoice::Always)]
    pub explain: ExplainChoice,
    /// Show header values (From, To, Cc, Subject, Message-ID, Date). Off by default:
    /// they are other people's correspondence.
    #[arg(long)]
    pub show_headers: bool,
    /// Show AUTH secrets (passwords, tokens). Off by default.
    #[arg(long)]
    pub show_secrets: bool,
    /// Show only sessions with a finding at or above this severity (info, warn, alert).
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub findings: Option<crate::findings::Severity>,
}

impl OutputArgs {
    pub fn privacy(&self) -> Privacy {
        Privacy {
            show_secrets: self.show_secrets,
            show_headers: self.show_headers,
        }
    }

    /// The `{"type":"run"}` line: mail-trace's version, what was read (`inputs` under
    /// `key`: "interfaces" live, "files" in replay) and the privacy flags in force.
    pub fn run_line(&self, key: &str, inputs: &[String]) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), "run".into());
        m.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        m.insert(key.into(), inputs.into());
        m.insert(
            "privacy".into(),
            serde_json::json!({
                "show_secrets": self.show_secrets,
                "show_headers": self.show_headers,
            }),
        );
        serde_json::Value::Object(m)
    }

    /// Builds the chosen output over `out`; `is_tty` says whether it is a terminal.
    pub fn build<W: Write>(&self, out: W, is_tty: bool) -> Outputs<W> {
        if self.json {
            return Outputs::Json(JsonLines::new(out, self.events));
        }
        if self.summary {
            return Outputs::Summary(tail::Summary::new(out));
        }
        let color = match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_tty && std::env::var_os("NO_COLOR").is_none(),
        };
        let explain = self.explain == ExplainChoice::Always;
        Outputs::Tail(tail::Tail::new(
            out,
            tail::Style { color, explain },
            self.privacy(),
        ))
    }

    /// The output on standard output.
    pub fn stdout(&self) -> Outputs<std::io::BufWriter<std::io::Stdout>> {
        let tty = std::io::stdout().is_terminal();
        self.build(
            std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            tty,
        )
    }
}
