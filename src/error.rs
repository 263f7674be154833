//! Errors at the poller's boundary, each mapped to a small fixed `kind` for metrics and the page.
//!
//! An error's text never goes into a label (unbounded series, and it can echo a secret); only
//! [`PollError::label`] does.

use thiserror::Error;

/// Why a poll of one node did not produce facts.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PollError {
    #[error("the poll did not finish within poll_timeout")]
    Timeout,
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connection failed or dropped")]
    Connection,
    #[error("authentication failed")]
    Auth,
    #[error("TLS handshake or certificate problem")]
    Tls,
    #[error("Redis is loading its dataset")]
    Loading,
    #[error("Redis replied with an error")]
    Server,
    #[error("reply not understood")]
    Protocol,
}

impl PollError {
    /// The bounded label value: `timeout`, `connection_refused`, `auth`, …
    pub fn label(&self) -> &'static str {
        match self {
            PollError::Timeout => "timeout",
            PollError::ConnectionRefused => "connection_refused",
            PollError::Connection => "connection",
            PollError::Auth => "auth",
            PollError::Tls => "tls",
            PollError::Loading => "loading",
            PollError::Server => "server",
            PollError::Protocol => "protocol",
        }
    }

    /// Every kind, so the error counter can be pre-created at zero per target.
    pub const ALL: [PollError; 8] = [
        PollError::Timeout,
        PollError::ConnectionRefused,
        PollError::Connection,
        PollError::Auth,
        PollError::Tls,
        PollError::Loading,
        PollError::Server,
        PollError::Protocol,
    ];

    /// Classifies a redis-rs error without keeping its text.
    pub fn from_redis(err: &redis::RedisError) -> PollError {
        use redis::{ErrorKind, ServerErrorKind};
        if err.is_timeout() {
            return PollError::Timeout;
        }
        if err.is_connection_refusal() {
            return PollError::ConnectionRefused;
        }
        let text = err.to_string().to_ascii_lowercase();
        match err.kind() {
            ErrorKind::AuthenticationFailed => PollError::Auth,
            ErrorKind::Server(ServerErrorKind::BusyLoading) => PollError::Loading,
            ErrorKind::Server(ServerErrorKind::NoPerm) => PollError::Auth,
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => PollError::Protocol,
            _ if text.contains("wrongpass")
                || text.contains("noauth")
                || text.contains("authentication") =>
            {
                PollError::Auth
            }
            _ if text.contains("certificate") || text.contains("tls") => PollError::Tls,
            ErrorKind::Io => PollError::Connection,
            _ if err.is_io_error() || err.is_connection_dropped() => PollError::Connection,
            ErrorKind::Server(_) | ErrorKind::Extension => PollError::Server,
            _ => PollError::Protocol,
        }
    }
}
