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
    #[error("authentication or permission refused")]
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

/// A failed poll or connect: its bounded kind (labels, the page), and for log lines and the
/// `check` report only, what Redis or the operating system said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: PollError,
    /// One line, at most 200 characters, any `user:password@` of a URL removed.
    pub detail: String,
}

impl Failure {
    /// Kind and words of a redis-rs error: "WRONGPASS invalid username-password pair…",
    /// "NOPERM … has no permissions to run the 'info' command", "DENIED Redis is running in
    /// protected mode…", "max number of clients reached".
    pub fn redis(err: &redis::RedisError) -> Failure {
        Failure {
            kind: PollError::from_redis(err),
            detail: one_line(&err.to_string()),
        }
    }

    pub fn label(&self) -> &'static str {
        self.kind.label()
    }
}

impl From<PollError> for Failure {
    fn from(kind: PollError) -> Failure {
        Failure {
            detail: kind.to_string(),
            kind,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.to_string();
        if self.detail == kind {
            f.write_str(&kind)
        } else {
            write!(f, "{kind}: {}", self.detail)
        }
    }
}

/// The first line of `text`, at most 200 characters, without the userinfo of any URL in it.
pub(crate) fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    crate::config::redact_userinfo(line)
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_redis_words_but_never_a_urls_password() {
        let err = redis::RedisError::from((
            redis::ErrorKind::Io,
            "connect failed",
            "redis://exporter:s3cret-pw@10.0.0.1:6379 unreachable\nsecond line".to_owned(),
        ));
        let f = Failure::redis(&err);
        assert_eq!(f.kind, PollError::Connection);
        assert!(!f.detail.contains("s3cret-pw"), "{}", f.detail);
        assert!(f.detail.contains("10.0.0.1:6379"), "{}", f.detail);
        assert!(!f.detail.contains("second line"), "{}", f.detail);
        assert_eq!(
            Failure::from(PollError::Timeout).to_string(),
            "the poll did not finish within poll_timeout"
        );
    }
}
