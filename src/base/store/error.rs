//! The one error type of the store layer.

use std::fmt;
use std::time::Duration;

/// What went wrong, coarse enough for a caller to decide between retrying and failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key does not exist (or a parent of it does not).
    NotFound,
    /// The key exists and the operation required that it does not.
    AlreadyExists,
    /// The store refused access (HDFS permissions, ACLs, Unix modes).
    PermissionDenied,
    /// The store cannot be reached or is not serving (NameNode down or standby, safe mode,
    /// connection refused, no DataNode holds a block). Worth retrying later.
    Unavailable,
    /// The call did not finish within the configured timeout. Worth retrying later; for a
    /// write, the outcome is unknown until the caller reads back.
    Timeout,
    /// Data came back damaged (checksum mismatch, short read, unparsable content).
    Corrupt,
    /// The request itself is wrong (invalid key, unsupported URL, key is a directory...).
    Invalid,
    /// Anything else; carries the backend's message.
    Other,
}

impl ErrorKind {
    /// Whether the same call may succeed if retried later without any change.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    /// A short snake_case name, for metrics labels and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Other => "other",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unavailable => "store unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Invalid => "invalid request",
            ErrorKind::Other => "failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failed store operation: its kind, the operation, the key it touched, and the backend's
/// own words.
#[derive(Debug, thiserror::Error)]
#[error("{op} '{key}': {kind}{}{}", detail_suffix(.detail), hint(*.kind))]
pub struct StoreError {
    kind: ErrorKind,
    op: &'static str,
    key: String,
    detail: String,
}

/// What to check when the store cannot be reached.
fn hint(kind: ErrorKind) -> &'static str {
    if kind.is_transient() {
        "; is the store reachable? check the URL, HADOOP_CONF_DIR and that the NameNode is up"
    } else {
        ""
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl StoreError {
    /// A new error of `kind` for operation `op` on `key`, with the backend's `detail`.
    pub fn new(kind: ErrorKind, op: &'static str, key: &str, detail: impl Into<String>) -> Self {
        StoreError {
            kind,
            op,
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    /// The error for a call that exceeded `limit`.
    pub fn timeout(op: &'static str, key: &str, limit: Duration) -> Self {
        StoreError::new(
            ErrorKind::Timeout,
            op,
            key,
            format!("no answer within {}", humantime::format_duration(limit)),
        )
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed (`put`, `read`, `rename`...).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The key the operation touched.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The backend's own description, possibly empty.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}
