//! The `kubectl kadalu` plugin as a library: command line, validation, rendering and the
//! API calls of each command, so tests can drive every command against a mocked client.

pub mod cli;
pub mod commands;
pub mod exit;
pub mod pool;
pub mod render;
pub mod validate;
