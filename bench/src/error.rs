//! One error type for the whole benchmark: it is a tool that either produces figures or says
//! why it could not.

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// A `BenchError::Msg` from anything printable.
pub fn msg(text: impl Into<String>) -> BenchError {
    BenchError::Msg(text.into())
}
