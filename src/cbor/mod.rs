//! A bounded DAG-CBOR reader: item heads, strings, skipping, and whole values as a tree
//! that borrows from the input. It stands below both `source/` (the frame header reader)
//! and `decode/` (the full decoder), and imports nothing of the crate.
//!
//! # Bounds
//!
//! - Every length is checked against the bytes left before it is used.
//! - Nesting is bounded by [`CBOR_DEPTH_MAX`], reading or skipping.
//! - Indefinite lengths (forbidden in DAG-CBOR) are refused, as are tags other than 42.
//! - Every array and map is charged to a [`Budget`] in bytes before it is allocated, so
//!   the memory a decode takes is bounded by the caller, whatever the input.
//!
//! # Errors
//!
//! The reader refuses with a [`CborError`]. A relay frame's readers (the header reader
//! in `source/frame.rs`, the full decoder in `decode/`) both answer with a
//! [`FrameError`], which carries every [`CborError`] as its own variant beside the
//! frame's shape errors; it lives here because both return it.

mod error;
mod reader;
mod value;

pub use error::{CborError, FrameError};
pub(crate) use reader::Reader;
pub use reader::CBOR_DEPTH_MAX;
pub use value::{Budget, Value};
