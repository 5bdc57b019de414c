//! The Kubernetes client's error type: what went wrong talking to the API server, typed so that
//! callers can decide (retry, relist, re-read, give up) without string matching.

use std::fmt;
use std::time::Duration;

/// A `metav1.Status` failure as the API server reports it (or as we synthesise it from a bare
/// HTTP status when the body is not a Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HTTP status code (`code` in the Status body).
    pub code: u16,
    /// Machine-readable reason: `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Gone`,
    /// `TooManyRequests`, `Forbidden`, `Invalid`, `InternalError`, ... (may be empty).
    pub reason: String,
    /// Human-readable message from the server.
    pub message: String,
    /// `Retry-After` header (429, 503), when present.
    pub retry_after: Option<Duration>,
}

/// Every way a Kubernetes API call can fail. `Clone`: one credential refresh's failure is
/// the answer of every request that waited for it.
#[derive(Debug, Clone)]
pub enum Error {
    /// The server answered with a non-2xx status; `Status` carries code, reason and message.
    Api { what: String, status: Status },
    /// The request never got an answer: connect refused, reset, TLS failure, timeout.
    Transport { what: String, message: String },
    /// The server answered 2xx but the body was not what we expected (malformed JSON, wrong shape,
    /// truncated stream).
    Decode { what: String, message: String },
    /// Client configuration (kubeconfig, in-cluster files, credentials) is unusable.
    Config {
        source: String,
        field: String,
        message: String,
    },
}

impl Error {
    /// HTTP code of an API error, if this is one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(status.code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Api { status, .. } if status.code == 409 && status.reason == "AlreadyExists")
    }
    /// 410 Gone / Expired: the resourceVersion or continue token is too old; relist.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }
    /// Worth retrying the same request later: transport failures, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Api { status, .. } => status.code == 429 || status.code >= 500,
            Error::Decode { .. } => true,
            Error::Config { .. } => false,
        }
    }
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { status, .. } => status.retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api { what, status } => {
                write!(f, "{what}: the API server answered {}", status.code)?;
                if !status.reason.is_empty() {
                    write!(f, " {}", status.reason)?;
                }
                if !status.message.is_empty() {
                    write!(f, ": {}", status.message)?;
                }
                Ok(())
            }
            Error::Transport { what, message } => write!(f, "{what}: {message}"),
            Error::Decode { what, message } => write!(f, "{what}: malformed response: {message}"),
            Error::Config {
                source,
                field,
                message,
            } => {
                if field.is_empty() {
                    write!(f, "{source}: {message}")
                } else {
                    write!(f, "{source}: {field}: {message}")
                }
            }
        }
    }
}

impl std::error::Error for Error {}

/// apimachinery's `reasonForError` defaults for a bare code ("" for codes it has none for).
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}
