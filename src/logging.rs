//! Logs on stderr, text or JSON, with a level filter from `RINGWORKER_LOG`;
//! both can be changed while the agent runs (SIGHUP, see [`crate::reload`]).
//!
//! The format switch keeps a text and a JSON formatter side by side: both
//! see every span (each stores the span's fields in its own form), and each
//! event goes to the one in use. Replacing one formatter by the other would
//! leave the spans opened before the switch without fields in the new form
//! (the JSON formatter refuses to format such a span). The level filter is
//! an [`EnvFilter`] behind a [`reload`] layer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::span;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// The variable that holds the level filter (an [`EnvFilter`] directive such
/// as `debug` or `info,ringworker::runtime=trace`).
pub const LOG_ENV: &str = "RINGWORKER_LOG";

/// The level filter when `RINGWORKER_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// The filter directives this process starts with: `RINGWORKER_LOG` when it
/// holds a valid filter, else [`DEFAULT_FILTER`].
pub fn filter_from_env() -> String {
    std::env::var(LOG_ENV)
        .ok()
        .filter(|text| EnvFilter::try_new(text).is_ok())
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned())
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Changes the format and level of the logs while they are written.
pub struct LogHandle {
    json: Arc<AtomicBool>,
    filter: FilterHandle,
    directives: Mutex<String>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("format", &self.format())
            .field("filter", &self.filter())
            .finish()
    }
}

impl LogHandle {
    /// The format events are written in now.
    pub fn format(&self) -> LogFormat {
        if self.json.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }

    /// Write the next events in `format`.
    pub fn set_format(&self, format: LogFormat) {
        self.json
            .store(format == LogFormat::Json, Ordering::Relaxed);
    }

    /// The level filter in force, as its directives.
    pub fn filter(&self) -> String {
        self.directives
            .lock()
            .map(|d| d.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replace the level filter; on an invalid directive the filter in force
    /// stays and the error says why.
    pub fn set_filter(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|err| format!("log filter {directives:?}: {err}"))?;
        self.filter
            .reload(filter)
            .map_err(|err| format!("log filter {directives:?}: {err}"))?;
        let mut current = self.directives.lock().unwrap_or_else(|e| e.into_inner());
        *current = directives.to_owned();
        Ok(())
    }
}

static HANDLE: OnceLock<LogHandle> = OnceLock::new();

/// Install the process's logger on stderr in `format`, filtered by
/// `directives` (the configuration's `log_level`, or [`filter_from_env`]).
/// Returns its handle; `None` when a logger was installed already (the
/// first one stays).
pub fn init_logging(format: LogFormat, directives: &str) -> Option<&'static LogHandle> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (subscriber, handle) = build(format, directives, std::io::stderr, ansi);
    tracing_subscriber::util::SubscriberInitExt::try_init(subscriber).ok()?;
    Some(HANDLE.get_or_init(|| handle))
}

/// The handle of the logger [`init_logging`] installed.
pub fn handle() -> Option<&'static LogHandle> {
    HANDLE.get()
}

/// The format logs are written in now, or `fallback` when [`init_logging`]
/// has not installed a logger.
pub fn current_format(fallback: LogFormat) -> LogFormat {
    handle().map_or(fallback, LogHandle::format)
}

/// A subscriber writing to `writer`, and its handle.
fn build<W>(
    format: LogFormat,
    directives: &str,
    writer: W,
    ansi: bool,
) -> (impl Subscriber + Send + Sync, LogHandle)
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let json = Arc::new(AtomicBool::new(format == LogFormat::Json));
    let switch = FormatSwitch {
        text: Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer.clone())
                .with_ansi(ansi)
                .with_target(false),
        ),
        json: Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer)
                .with_target(false),
        ),
        use_json: Arc::clone(&json),
    };
    let subscriber = Registry::default().with(filter).with(switch);
    let handle = LogHandle {
        json,
        filter: filter_handle,
        directives: Mutex::new(directives.to_owned()),
    };
    (subscriber, handle)
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// Two formatters, one of which writes each event.
struct FormatSwitch<S> {
    text: BoxedLayer<S>,
    json: BoxedLayer<S>,
    use_json: Arc<AtomicBool>,
}

impl<S> Layer<S> for FormatSwitch<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_layer(&mut self, subscriber: &mut S) {
        self.text.on_layer(subscriber);
        self.json.on_layer(subscriber);
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_new_span(attrs, id, ctx.clone());
        self.json.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.text.on_record(id, values, ctx.clone());
        self.json.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.text.on_follows_from(id, follows, ctx.clone());
        self.json.on_follows_from(id, follows, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.use_json.load(Ordering::Relaxed) {
            self.json.on_event(event, ctx);
        } else {
            self.text.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_enter(id, ctx.clone());
        self.json.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_exit(id, ctx.clone());
        self.json.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.text.on_close(id.clone(), ctx.clone());
        self.json.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.text.on_id_change(old, new, ctx.clone());
        self.json.on_id_change(old, new, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything written, shared with the test.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn the_format_and_the_level_change_while_spans_stay_open() {
        let capture = Capture::default();
        let (subscriber, handle) = build(LogFormat::Text, "info", capture.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("session", index = 7);
            let _entered = span.enter();
            tracing::info!(answer = 42, "first");
            handle.set_format(LogFormat::Json);
            tracing::info!(answer = 43, "second");
            tracing::debug!("hidden at info");
            handle.set_filter("debug").unwrap();
            tracing::debug!("shown at debug");
            assert!(handle.set_filter("ringworker=loud").is_err());
            assert_eq!(handle.filter(), "debug");
            handle.set_format(LogFormat::Text);
            tracing::info!("third");
        });
        let lines = capture.lines();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].contains("first")
                && lines[0].contains("answer=42")
                && !lines[0].starts_with('{'),
            "{}",
            lines[0]
        );
        let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["message"], "second");
        assert_eq!(second["answer"], 43);
        // The span opened before the switch still shows, with its fields.
        assert_eq!(second["span"]["index"], 7, "{second}");
        let third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(third["message"], "shown at debug");
        assert!(
            lines[3].contains("third") && lines[3].contains("session{index=7}"),
            "{}",
            lines[3]
        );
        assert_eq!(handle.format(), LogFormat::Text);
    }
}
