//! Event sources: the AT Protocol relay firehose.

pub mod cursor;
pub mod firehose;
pub mod frame;
pub mod refetch;
pub mod relay;
