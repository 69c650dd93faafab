//! Typed errors of namespace operations, answered to clients as POSIX-style errnos.

use cairn_common::proto::metadata::{meta_reply, Errno, MetaError, MetaReply};

/// Why an operation did not apply.
#[derive(Debug)]
pub enum OpError {
    /// The request is refused; nothing changed. Answered to the client.
    Refused(MetaError),
    /// The node cannot read or write its own database; it must stop rather than diverge.
    Storage(String),
}

pub type OpResult<T> = Result<T, OpError>;

pub fn refuse(errno: Errno, message: impl Into<String>) -> OpError {
    OpError::Refused(meta_error(errno, message))
}

pub fn meta_error(errno: Errno, message: impl Into<String>) -> MetaError {
    MetaError {
        errno: errno as i32,
        message: message.into(),
        leader_id: 0,
        leader_addr: String::new(),
    }
}

pub fn reply(result: meta_reply::Result) -> MetaReply {
    MetaReply {
        result: Some(result),
        ..Default::default()
    }
}

pub fn error_reply(error: MetaError) -> MetaReply {
    reply(meta_reply::Result::Error(error))
}

impl OpError {
    /// The answer a client gets: the refusal itself, or EIO for a storage failure.
    pub fn into_reply(self) -> MetaReply {
        match self {
            OpError::Refused(e) => error_reply(e),
            OpError::Storage(s) => error_reply(meta_error(Errno::Eio, s)),
        }
    }
}

impl From<rocksdb::Error> for OpError {
    fn from(e: rocksdb::Error) -> Self {
        OpError::Storage(e.to_string())
    }
}

impl From<prost::DecodeError> for OpError {
    fn from(e: prost::DecodeError) -> Self {
        OpError::Storage(format!("stored record does not decode: {e}"))
    }
}
