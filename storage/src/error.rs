//! The storage error type.

/// Errors from a storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine failed an I/O operation (open, write, sync). The message says what and where.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A previous sync failed; the engine refuses all writes until the process restarts and
    /// recovers from what is really on disk.
    #[error("storage is poisoned after a failed sync ({0}); restart the node to recover from disk")]
    Poisoned(String),
    /// The disk is full. Like [`Error::Poisoned`], nothing more is written until the node
    /// restarts with space free (the node refuses new writes earlier, below its free-space
    /// reserve, so this is the backstop).
    #[error("the disk is full ({0}); free space, then restart the node")]
    Full(String),
    /// Bytes read back do not decode or fail their checksum.
    #[error("corrupted data in {what}: {detail}; the node's data directory needs repair or re-replication")]
    Corrupt {
        /// What was being read.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
