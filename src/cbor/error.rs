//! Why DAG-CBOR bytes could not be read ([`CborError`]), and why a relay frame could
//! not be ([`FrameError`]: a [`CborError`], or a frame of the wrong shape).

use super::CBOR_DEPTH_MAX;

/// Why the reader refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The input ends inside a value.
    #[error("CBOR truncated at byte {at}")]
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// An indefinite-length item, which DAG-CBOR forbids.
    #[error("indefinite-length item at byte {at} (not DAG-CBOR)")]
    Indefinite {
        /// Its offset.
        at: usize,
    },
    /// A reserved additional-information value, or bytes that are no valid item there.
    #[error("malformed CBOR at byte {at}")]
    Malformed {
        /// Its offset.
        at: usize,
    },
    /// Nesting deeper than [`CBOR_DEPTH_MAX`].
    #[error("nesting deeper than {CBOR_DEPTH_MAX} levels")]
    TooDeep,
    /// A value of the wrong type.
    #[error("{what} at byte {at} has the wrong CBOR type")]
    WrongType {
        /// Which value.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A text string that is not UTF-8.
    #[error("text at byte {at} is not UTF-8")]
    NotUtf8 {
        /// Its offset.
        at: usize,
    },
    /// Decoding would allocate more than its [`Budget`](super::Budget).
    #[error("decoding needs more memory than its budget allows")]
    TooManyValues,
    /// A CBOR tag other than 42 (CID), which DAG-CBOR forbids.
    #[error("CBOR tag {tag} at byte {at} (DAG-CBOR allows only tag 42)")]
    UnsupportedTag {
        /// The tag.
        tag: u64,
        /// Its offset.
        at: usize,
    },
}

/// Why a frame could not be read.
///
/// Flat, as redb's umbrella `Error` is: each [`CborError`] becomes the variant of the
/// same name (see the `From` impl), beside the errors of a frame's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame ends inside a value.
    #[error("frame truncated at byte {at}")]
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// An indefinite-length item, which DAG-CBOR forbids.
    #[error("indefinite-length item at byte {at} (not DAG-CBOR)")]
    Indefinite {
        /// Its offset.
        at: usize,
    },
    /// A reserved additional-information value.
    #[error("malformed CBOR head at byte {at}")]
    Malformed {
        /// Its offset.
        at: usize,
    },
    /// Nesting deeper than [`CBOR_DEPTH_MAX`].
    #[error("nesting deeper than {CBOR_DEPTH_MAX} levels")]
    TooDeep,
    /// A value of the wrong type.
    #[error("{what} at byte {at} has the wrong CBOR type")]
    WrongType {
        /// Which value.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A text string that is not UTF-8.
    #[error("text at byte {at} is not UTF-8")]
    NotUtf8 {
        /// Its offset.
        at: usize,
    },
    /// A required field is absent.
    #[error("the frame has no {0}")]
    Missing(&'static str),
    /// The header's `op` is neither 1 nor -1.
    #[error("unknown frame op {0}")]
    UnknownOp(i64),
    /// Bytes after the body.
    #[error("{0} bytes after the frame body")]
    TrailingBytes(usize),
    /// The frame exceeds the configured size limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Decoding would allocate more than its budget (the frame size limit).
    #[error("decoding needs more memory than the frame size limit allows")]
    TooManyValues,
    /// A CBOR tag other than 42 (CID), which DAG-CBOR forbids.
    #[error("CBOR tag {tag} at byte {at} (DAG-CBOR allows only tag 42)")]
    UnsupportedTag {
        /// The tag.
        tag: u64,
        /// Its offset.
        at: usize,
    },
    /// `seq` is not encoded as an 8-byte unsigned integer, so it cannot be rewritten in place.
    #[error("seq is not an 8-byte unsigned integer")]
    SeqNotRewritable,
}

impl From<CborError> for FrameError {
    /// The variant of the same name: a frame's readers match on one flat enum.
    fn from(error: CborError) -> Self {
        match error {
            CborError::Truncated { at } => FrameError::Truncated { at },
            CborError::Indefinite { at } => FrameError::Indefinite { at },
            CborError::Malformed { at } => FrameError::Malformed { at },
            CborError::TooDeep => FrameError::TooDeep,
            CborError::WrongType { what, at } => FrameError::WrongType { what, at },
            CborError::NotUtf8 { at } => FrameError::NotUtf8 { at },
            CborError::TooManyValues => FrameError::TooManyValues,
            CborError::UnsupportedTag { tag, at } => FrameError::UnsupportedTag { tag, at },
        }
    }
}
