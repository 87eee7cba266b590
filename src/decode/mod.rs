//! Full decoding of relay frames into the JSON that firehose consumers read: Jetstream v1
//! and the rsky ingester's `StreamEvent`, with collection and DID filters; and of labeler
//! frames into its `LabelStreamEvent` ([`labels`]).
//!
//! Everything here is bounded by the frame size limit: the CBOR reader checks every
//! length against the bytes left and refuses nesting past [`CBOR_DEPTH_MAX`](crate::cbor::CBOR_DEPTH_MAX), and a
//! frame's decoded values together take at most the frame limit in memory. Strings,
//! bytes and CIDs are borrowed from the frame, not copied.
//!
//! No crate does this for us within those bounds: `serde_ipld_dagcbor` and `cid`
//! allocate per value and per CID with no overall bound we could set, and the CAR
//! readers are async or stream-oriented; what is needed (DAG-CBOR's subset, CIDv1 in
//! base32, CAR v1 sections) is a few hundred lines with their own tests and fuzzing.

pub mod car;
pub mod cid;
pub mod event;
pub mod format;
pub mod json;
pub mod labels;

pub use event::{decode_frame, Decoded};
pub use format::{render, Filter, OutputFormat};
