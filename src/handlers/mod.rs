//! Handlers: the work a TASK names, and the registry that finds them.
//!
//! A [`Handler`] turns a payload into output bytes synchronously, appending
//! them to the connection's output buffer behind the RESULT header, so the
//! output is written once and the common handlers allocate nothing per
//! task. A handler whose answer is due later (the built-in `sleep`) returns
//! [`Reply::After`]; the runtime keeps the timer, so a sleeping task never
//! holds up the others on its session. Handlers run on the runtime's threads:
//! they must not block.
//!
//! Library users add their own with [`HandlerRegistry::register`]; one
//! whose answer comes from another thread (a pool of its own, an async
//! runtime) with [`HandlerRegistry::register_later`] ([`LaterHandler`]).

mod builtin;
mod later;

pub use builtin::{Crc32c, Echo, Sha256, Sink, Sleep, SLEEP_MAX_MS};
pub use later::{LateAnswers, Later, LaterHandler, Wake};

use std::sync::Arc;
use std::time::Duration;

use crate::config::HandlerSet;
use crate::protocol::codes;

/// When the output written by [`Handler::call`] becomes the RESULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Now.
    Ready,
    /// After this delay; other tasks keep flowing meanwhile.
    After(Duration),
    /// Later, from outside the call: the task becomes a [`Job`] the
    /// runtime runs (a declared handler's child process), and the session
    /// answers when the runtime reports its outcome. Other tasks keep
    /// flowing meanwhile; the task counts as in flight until then.
    Deferred,
}

/// A task whose answer comes later ([`Reply::Deferred`]): what the runtime
/// runs, and the task it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The declared handler (its index in the agent's
    /// [`HandlerSet`]).
    pub handler: usize,
    /// The TASK's id.
    pub task: u64,
    pub payload: Vec<u8>,
}

/// A task that failed; becomes RESULT `FAILED` with this code and message.
///
/// One pointer wide (the code and message live out of line), so that
/// `Result<Reply, TaskFailure>` comes back from [`Handler::call`] in
/// registers: failures are rare, and the common answer pays nothing for
/// their size. Read the fields through it like a struct's:
/// `failure.code`, `failure.message`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .0.code, .0.message)]
pub struct TaskFailure(Box<Failure>);

/// What a [`TaskFailure`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The RESULT's `code` (PROTOCOL.md "Error codes").
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Debug for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFailure")
            .field("code", &self.0.code)
            .field("message", &self.0.message)
            .finish()
    }
}

impl std::ops::Deref for TaskFailure {
    type Target = Failure;

    fn deref(&self) -> &Failure {
        &self.0
    }
}

impl TaskFailure {
    /// A failure with any code (PROTOCOL.md "Error codes").
    #[cold]
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        TaskFailure(Box::new(Failure {
            code,
            message: message.into(),
        }))
    }

    /// The payload is not what the handler accepts (`bad_payload`).
    #[cold]
    pub fn bad_payload(message: impl Into<String>) -> Self {
        TaskFailure::new(codes::BAD_PAYLOAD, message)
    }

    /// The handler could not do its work (`handler_failed`).
    #[cold]
    pub fn handler_failed(message: impl Into<String>) -> Self {
        TaskFailure::new(codes::HANDLER_FAILED, message)
    }

    /// The code and the message.
    pub fn into_parts(self) -> (&'static str, String) {
        let Failure { code, message } = *self.0;
        (code, message)
    }
}

/// Work a TASK can name.
pub trait Handler: Send + Sync + 'static {
    /// Run on `payload`, appending the output to `out`.
    ///
    /// `out` is the connection's output buffer: on entry it may already
    /// hold other frames and the RESULT header of this task, and the output
    /// is written there once, in place, never copied. A handler only ever
    /// appends: it must not read, truncate or rewrite what `out` held on
    /// entry (measure its own output from `out.len()` on entry). Whatever
    /// it appended is discarded if the call fails.
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure>;
}

impl<F> Handler for F
where
    F: Fn(&[u8], &mut Vec<u8>) -> Result<Reply, TaskFailure> + Send + Sync + 'static,
{
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        self(payload, out)
    }
}

/// A name that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("handler name {0:?} must be 1..=64 printable ASCII characters")]
    BadName(String),
    #[error("a handler named {0:?} is already registered")]
    Duplicate(String),
}

/// A registered handler: a built-in, called without going through `dyn`
/// (the session matches on it and the call is inlined), or one of a library
/// user's own.
#[derive(Clone)]
pub(crate) enum Dispatch {
    Echo,
    Sink,
    Crc32c,
    Sha256,
    Sleep,
    Custom(Arc<dyn Handler>),
    /// A declared handler, by its index in the agent's `HandlerSet`: its
    /// tasks are deferred to the runtime.
    External(usize),
    /// A library user's handler that answers from another thread.
    Later(Arc<dyn LaterHandler>),
}

impl Dispatch {
    /// The handler as a trait object.
    fn as_dyn(&self) -> &dyn Handler {
        match self {
            Dispatch::Echo => &Echo,
            Dispatch::Sink => &Sink,
            Dispatch::Crc32c => &Crc32c,
            Dispatch::Sha256 => &Sha256,
            Dispatch::Sleep => &Sleep,
            Dispatch::Custom(handler) => &**handler,
            Dispatch::External(_) | Dispatch::Later(_) => &Deferring,
        }
    }

    /// Run the handler; a built-in is called directly.
    #[inline(always)]
    pub(crate) fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        match self {
            Dispatch::Echo => Echo.call(payload, out),
            Dispatch::Sink => Sink.call(payload, out),
            Dispatch::Crc32c => Crc32c.call(payload, out),
            Dispatch::Sha256 => Sha256.call(payload, out),
            Dispatch::Sleep => Sleep.call(payload, out),
            Dispatch::Custom(handler) => handler.call(payload, out),
            Dispatch::External(_) | Dispatch::Later(_) => Ok(Reply::Deferred),
        }
    }
}

/// What a declared handler is when called directly: every call is
/// deferred to the runtime.
struct Deferring;

impl Handler for Deferring {
    fn call(&self, _payload: &[u8], _out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        Ok(Reply::Deferred)
    }
}

/// Handlers by name. Cheap to clone (the handlers are shared).
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    /// Sorted by name: lookups are a binary search over a handful of entries.
    /// Shared: every session holds the registry, and a clone is a reference
    /// count, not a copy of each name (10,000 sessions held 3 MB of copies).
    entries: Arc<Vec<(Box<str>, Dispatch)>>,
    /// The operator's declared handlers ([`HandlerRegistry::declare_all`]),
    /// which the runtime runs.
    declared: Arc<HandlerSet>,
    /// `ringworker_task_duration_seconds{handler}` by position, made at the
    /// first session's start (after the metrics recorder is installed) and
    /// shared by every session, as the entries are.
    durations: Arc<std::sync::OnceLock<Arc<[::metrics::Histogram]>>>,
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        HandlerRegistry::default()
    }

    /// The five handlers of PROTOCOL.md: `echo`, `sink`, `crc32c`, `sha256`, `sleep`.
    pub fn with_builtins() -> Self {
        let mut registry = HandlerRegistry::new();
        let builtins = [
            ("echo", Dispatch::Echo),
            ("sink", Dispatch::Sink),
            ("crc32c", Dispatch::Crc32c),
            ("sha256", Dispatch::Sha256),
            ("sleep", Dispatch::Sleep),
        ];
        for (name, handler) in builtins {
            registry
                .insert(name, handler)
                .expect("built-in names are valid and distinct");
        }
        registry
    }

    /// Add a handler under `name`.
    pub fn register(
        &mut self,
        name: &str,
        handler: impl Handler,
    ) -> Result<&mut Self, RegistryError> {
        self.insert(name, Dispatch::Custom(Arc::new(handler)))?;
        Ok(self)
    }

    /// Add a library user's handler under `name` whose answer comes later,
    /// from any thread (see [`LaterHandler`]).
    pub fn register_later(
        &mut self,
        name: &str,
        handler: impl LaterHandler,
    ) -> Result<&mut Self, RegistryError> {
        self.insert(name, Dispatch::Later(Arc::new(handler)))?;
        Ok(self)
    }

    /// Whether any handler answers from another thread: only then does a
    /// connection keep an inbox for such answers (and a runtime a way to be
    /// woken for them).
    pub fn has_later(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, handler)| matches!(handler, Dispatch::Later(_)))
    }

    /// The handler at `position`, when it answers from another thread.
    pub(crate) fn later_handler(&self, position: usize) -> Option<&Arc<dyn LaterHandler>> {
        match self.dispatch(position)? {
            Dispatch::Later(handler) => Some(handler),
            _ => None,
        }
    }

    /// Add the operator's declared handlers (the config file's
    /// `[handlers.NAME]` tables), each under its name: their tasks become
    /// [`Job`]s the runtime runs with the children they declare.
    pub fn declare_all(&mut self, set: &HandlerSet) -> Result<&mut Self, RegistryError> {
        for (index, decl) in set.handlers.iter().enumerate() {
            self.insert(&decl.name, Dispatch::External(index))?;
        }
        self.declared = Arc::new(set.clone());
        Ok(self)
    }

    /// Add declared handler `index` under `name`, without its declaration
    /// (a runtime answers its jobs with `handler_failed`): for tests of
    /// the job path.
    #[cfg(test)]
    pub(crate) fn declare(&mut self, name: &str, index: usize) -> Result<&mut Self, RegistryError> {
        self.insert(name, Dispatch::External(index))?;
        Ok(self)
    }

    /// The declared handlers, in the order of their [`Job::handler`] index.
    pub fn declared(&self) -> &HandlerSet {
        &self.declared
    }

    /// The declared handler's index, for the handler at `position`.
    pub(crate) fn external_index(&self, position: usize) -> Option<usize> {
        match self.dispatch(position)? {
            Dispatch::External(index) => Some(*index),
            _ => None,
        }
    }

    /// The duration histogram of each handler, by position.
    pub(crate) fn durations(&self) -> Arc<[::metrics::Histogram]> {
        self.durations
            .get_or_init(|| {
                self.names()
                    .iter()
                    .map(|name| {
                        ::metrics::histogram!(crate::metrics::TASK_DURATION, "handler" => name.clone())
                    })
                    .collect()
            })
            .clone()
    }

    fn insert(&mut self, name: &str, handler: Dispatch) -> Result<(), RegistryError> {
        // Positions change: the histograms are made again for the new list.
        self.durations = Arc::default();
        if name.is_empty()
            || name.len() > crate::protocol::frame::MAX_HANDLER_NAME
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        match self.entries.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(_) => Err(RegistryError::Duplicate(name.to_owned())),
            Err(at) => {
                Arc::make_mut(&mut self.entries).insert(at, (name.into(), handler));
                Ok(())
            }
        }
    }

    /// The handler registered under `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Handler> {
        self.position(name).map(|at| self.entries[at].1.as_dyn())
    }

    /// The position of `name` in [`HandlerRegistry::names`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.entries.binary_search_by(|(n, _)| (**n).cmp(name)).ok()
    }

    /// The handler at position `index` of [`HandlerRegistry::names`].
    #[inline]
    pub(crate) fn dispatch(&self, index: usize) -> Option<&Dispatch> {
        self.entries.get(index).map(|(_, handler)| handler)
    }

    /// Every name, sorted; HELLO's `handlers`.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.to_string()).collect()
    }

    /// Run the handler named `name`. An unknown name is `unknown_handler`.
    pub fn call(
        &self,
        name: &str,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Reply, TaskFailure> {
        match self.position(name).and_then(|at| self.dispatch(at)) {
            Some(handler) => handler.call(payload, out),
            None => Err(TaskFailure::new(
                codes::UNKNOWN_HANDLER,
                format!("no handler named {name:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_handler_is_a_failure_naming_it() {
        let registry = HandlerRegistry::with_builtins();
        let mut out = Vec::new();
        let failure = registry.call("nope", b"", &mut out).unwrap_err();
        assert_eq!(failure.code, "unknown_handler");
        assert!(failure.message.contains("nope"));
    }

    #[test]
    fn every_handler_appends_behind_what_the_buffer_held() {
        let mut registry = HandlerRegistry::with_builtins();
        registry
            .register("closure", |payload: &[u8], out: &mut Vec<u8>| {
                out.extend(payload.iter().rev());
                Ok(Reply::Ready)
            })
            .unwrap();
        let mut out = b"held".to_vec();
        registry.call("echo", b"+more", &mut out).unwrap();
        registry.call("crc32c", b"", &mut out).unwrap();
        registry.call("sink", b"ignored", &mut out).unwrap();
        registry.call("closure", b"ab", &mut out).unwrap();
        assert_eq!(out, b"held+more\0\0\0\0ba");
        assert!(registry.get("closure").is_some());
        assert!(registry.get("nope").is_none());
        assert_eq!(registry.position("echo"), Some(2));
    }

    #[test]
    fn a_handler_result_is_two_words() {
        // Returned in registers, not through memory the caller reads back.
        assert!(std::mem::size_of::<Result<Reply, TaskFailure>>() <= 16);
        assert_eq!(
            std::mem::size_of::<TaskFailure>(),
            std::mem::size_of::<usize>()
        );
        let failure = TaskFailure::bad_payload("short");
        assert_eq!(
            (failure.code, failure.message.as_str()),
            ("bad_payload", "short")
        );
        assert_eq!(failure.to_string(), "bad_payload: short");
        assert_eq!(failure.into_parts(), ("bad_payload", "short".to_owned()));
    }

    #[test]
    fn names_are_sorted_and_complete() {
        let registry = HandlerRegistry::with_builtins();
        assert_eq!(
            registry.names(),
            ["crc32c", "echo", "sha256", "sink", "sleep"]
        );
    }

    #[test]
    fn user_handlers_can_be_added_and_bad_names_are_refused() {
        let mut registry = HandlerRegistry::with_builtins();
        registry
            .register("upper", |payload: &[u8], out: &mut Vec<u8>| {
                out.extend(payload.iter().map(u8::to_ascii_uppercase));
                Ok(Reply::Ready)
            })
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(registry.call("upper", b"abc", &mut out), Ok(Reply::Ready));
        assert_eq!(out, b"ABC");
        assert_eq!(
            registry.register("echo", Echo).unwrap_err(),
            RegistryError::Duplicate("echo".into())
        );
        assert!(matches!(
            registry.register("has space", Echo),
            Err(RegistryError::BadName(_))
        ));
        assert!(matches!(
            registry.register("", Echo),
            Err(RegistryError::BadName(_))
        ));
        assert!(matches!(
            registry.register(&"x".repeat(65), Echo),
            Err(RegistryError::BadName(_))
        ));
    }
}
