//! Log output of the agent: plain text, or one JSON object per line (`--log-format json`), to stdout.
//!
//! Colours only when stdout is a terminal and `NO_COLOR` is unset: under journald (or any pipe) a
//! log line carries no ANSI escape codes. The filter is `--log` when given on the command line,
//! else `RUST_LOG` when set, else `--log`'s default (`info`).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, fields (journald, Loki, jq).
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log filter {filter:?} (from {origin}): {source}")]
    Filter {
        filter: String,
        origin: &'static str,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a logger is already installed: {0}")]
    Installed(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// The filter in effect and where it came from: an explicit `--log` wins, then `RUST_LOG`, then
/// `--log`'s default.
pub fn resolve_filter(
    flag: &str,
    flag_given: bool,
    rust_log: Option<&str>,
) -> (String, &'static str) {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(env) if !flag_given => (env.to_owned(), "RUST_LOG"),
        _ => (flag.to_owned(), "--log"),
    }
}

/// Whether to colour: only on a terminal, and never with `NO_COLOR` set to anything non-empty.
pub fn use_ansi(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A subscriber writing to `writer`.
///
/// # Errors
/// The filter does not parse.
pub fn subscriber<W>(
    filter: &str,
    origin: &'static str,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env_filter = EnvFilter::try_new(filter).map_err(|source| LoggingError::Filter {
        filter: filter.to_owned(),
        origin,
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_target(false)
        .with_writer(writer);
    Ok(match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .with_current_span(false)
                .finish(),
        ),
    })
}

/// Installs the process-wide logger on stdout.
///
/// # Errors
/// The filter does not parse, or a logger is already installed.
pub fn init(flag: &str, flag_given: bool, format: LogFormat) -> Result<(), LoggingError> {
    use std::io::IsTerminal as _;
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, origin) = resolve_filter(flag, flag_given, rust_log.as_deref());
    let ansi = use_ansi(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let sub = subscriber(&filter, origin, format, ansi, std::io::stdout)?;
    tracing::subscriber::set_global_default(sub)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, ansi: bool, filter: &str) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(filter, "--log", format, ansi, move || out.clone()).expect("filter");
        tracing::subscriber::with_default(sub, || {
            tracing::info!(server = "pg-test-1", "server is UP");
            tracing::debug!("hidden at info");
        });
        let bytes = buf.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    #[test]
    fn text_logs_off_a_terminal_carry_no_escape_codes() {
        let plain = capture(LogFormat::Text, use_ansi(false, None), "info");
        assert!(plain.contains("server is UP"), "{plain}");
        assert!(plain.contains("pg-test-1"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "ANSI in {plain:?}");
        assert!(!plain.contains("hidden"), "{plain}");
        // The same on a terminal does colour (so the check above can fail).
        let tty = capture(LogFormat::Text, use_ansi(true, None), "info");
        assert!(tty.contains('\u{1b}'), "no ANSI on a terminal: {tty:?}");
    }

    #[test]
    fn json_logs_are_one_object_per_line() {
        let out = capture(LogFormat::Json, true, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "server is UP");
        assert_eq!(v["fields"]["server"], "pg-test-1");
        assert!(!out.contains('\u{1b}'));
    }

    #[test]
    fn rust_log_applies_unless_log_is_given() {
        assert_eq!(
            resolve_filter("info", false, Some("pgsvc=debug")),
            ("pgsvc=debug".to_owned(), "RUST_LOG")
        );
        assert_eq!(
            resolve_filter("warn", true, Some("debug")),
            ("warn".to_owned(), "--log")
        );
        assert_eq!(
            resolve_filter("info", false, Some("  ")),
            ("info".to_owned(), "--log")
        );
        assert_eq!(
            resolve_filter("info", false, None),
            ("info".to_owned(), "--log")
        );
        let debug = capture(LogFormat::Text, false, "debug");
        assert!(debug.contains("hidden at info"), "{debug}");
    }

    #[test]
    fn no_color_and_terminals() {
        use std::ffi::OsStr;
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
    }

    #[test]
    fn a_bad_filter_is_an_error_naming_its_origin() {
        let err = subscriber("=[", "RUST_LOG", LogFormat::Text, false, std::io::sink)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
    }
}
