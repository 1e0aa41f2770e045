//! The protocol core, sans-IO: frames, the JSON bodies, and the worker's
//! session state machine.
//!
//! Nothing in here reads a socket, starts a thread or looks at a clock. Both
//! runtimes drive the same [`machine::WorkerMachine`], so each protocol rule
//! lives in exactly one place and is tested without I/O. The accessor and
//! parsing functions never panic on peer input.

pub mod frame;
pub mod hello;
pub mod machine;

pub use frame::{FrameError, FrameHeader, FrameKind, HEADER_LEN};
pub use hello::{codes, ErrorBody, GoodbyeBody, Hello, Welcome, PROTOCOL_VERSION};
pub use machine::{
    CloseReason, DrainOrigin, Event, Input, MachineConfig, Phase, TaskAt, TaskOutcome, TaskRequest,
    WorkerMachine,
};
