//! Snapshot data: a group's state streamed to and from a file (or, on the simulator's in-memory
//! engine, a buffer), so that building, sending and installing a snapshot of a shard of any size
//! holds a bounded amount of it in memory.
//!
//! Format (all integers big-endian):
//! ```text
//! "NORNSNAP" | version u32 | header length u32 | header (codec-encoded) |
//! { key length u32 | key | value length u32 | value (sealed as stored) }* |
//! 0xFFFF_FFFF | record count u64 | CRC32 of every byte before this field
//! ```
//! Every value keeps the seal (CRC of key and value) it has in the store, and the trailer's CRC
//! covers the whole file, so a damaged snapshot is refused before any of it is installed.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

const MAGIC: &[u8; 8] = b"NORNSNAP";
const VERSION: u32 = 1;
const END: u32 = u32::MAX;
/// Longest key a snapshot record may carry.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Longest value a snapshot record may carry.
pub const VALUE_BYTES_MAX: usize = 256 << 20;
/// Longest header.
const HEADER_BYTES_MAX: usize = 16 << 20;

/// A snapshot's bytes as openraft streams them: a file, or memory on the simulator's engine.
pub enum SnapData {
    /// A file on disk, and where it is.
    File {
        /// The open file.
        file: tokio::fs::File,
        /// Its path.
        path: PathBuf,
    },
    /// Bytes in memory.
    Mem(Cursor<Vec<u8>>),
}

impl std::fmt::Debug for SnapData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapData::File { path, .. } => write!(f, "SnapData::File({})", path.display()),
            SnapData::Mem(c) => write!(f, "SnapData::Mem({} bytes)", c.get_ref().len()),
        }
    }
}

impl AsyncRead for SnapData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).poll_read(cx, buf),
            SnapData::Mem(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SnapData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).poll_write(cx, buf),
            SnapData::Mem(c) => Pin::new(c).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).poll_flush(cx),
            SnapData::Mem(c) => Pin::new(c).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).poll_shutdown(cx),
            SnapData::Mem(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}

impl AsyncSeek for SnapData {
    fn start_seek(self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).start_seek(position),
            SnapData::Mem(c) => Pin::new(c).start_seek(position),
        }
    }
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.get_mut() {
            SnapData::File { file, .. } => Pin::new(file).poll_complete(cx),
            SnapData::Mem(c) => Pin::new(c).poll_complete(cx),
        }
    }
}

/// Why snapshot bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// Reading or writing failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a well-formed snapshot, or fail their checksum.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Writes a snapshot: header, records, trailer.
pub struct SnapWriter<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
    count: u64,
}

impl<W: Write> SnapWriter<W> {
    /// Starts a snapshot with `header`.
    pub fn new(w: W, header: &[u8]) -> Result<Self, SnapError> {
        let mut s = Self { w, crc: crc32fast::Hasher::new(), count: 0 };
        s.put(MAGIC)?;
        s.put(&VERSION.to_be_bytes())?;
        s.put(&len32(header.len())?.to_be_bytes())?;
        s.put(header)?;
        Ok(s)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), SnapError> {
        self.crc.update(b);
        self.w.write_all(b)?;
        Ok(())
    }

    /// Adds one pair.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapError> {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(SnapError::Corrupt(format!("a record of {} + {} bytes is too large", key.len(), value.len())));
        }
        self.put(&len32(key.len())?.to_be_bytes())?;
        self.put(key)?;
        self.put(&len32(value.len())?.to_be_bytes())?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> Result<W, SnapError> {
        self.put(&END.to_be_bytes())?;
        let count = self.count.to_be_bytes();
        self.put(&count)?;
        let crc = self.crc.clone().finalize();
        self.w.write_all(&crc.to_be_bytes())?;
        self.w.flush()?;
        Ok(self.w)
    }
}

fn len32(n: usize) -> Result<u32, SnapError> {
    u32::try_from(n).ok().filter(|n| *n != END).ok_or_else(|| SnapError::Corrupt(format!("{n} bytes is too long")))
}

/// Reads a snapshot record by record; the last call checks the trailer.
pub struct SnapReader<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    count: u64,
    done: bool,
}

impl<R: Read> SnapReader<R> {
    /// Opens a snapshot and returns its header.
    pub fn open(r: R) -> Result<(Self, Vec<u8>), SnapError> {
        let mut s = Self { r, crc: crc32fast::Hasher::new(), count: 0, done: false };
        let magic = s.take(8)?;
        if magic != MAGIC {
            return Err(SnapError::Corrupt("not a Norn snapshot".into()));
        }
        let version = s.u32()?;
        if version != VERSION {
            return Err(SnapError::Corrupt(format!("snapshot format {version}, this node reads {VERSION}")));
        }
        let n = s.u32()? as usize;
        if n > HEADER_BYTES_MAX {
            return Err(SnapError::Corrupt(format!("header of {n} bytes")));
        }
        let header = s.take(n)?;
        Ok((s, header))
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, SnapError> {
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SnapError::Corrupt("truncated snapshot".into()),
            _ => SnapError::Io(e),
        })?;
        self.crc.update(&b);
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, SnapError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next pair, or `None` at the end once the trailer checked out.
    pub fn next_record(&mut self) -> Result<Option<Pair>, SnapError> {
        if self.done {
            return Ok(None);
        }
        let klen = self.u32()?;
        if klen == END {
            let b = self.take(8)?;
            let count = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let computed = self.crc.clone().finalize();
            let mut stored = [0u8; 4];
            self.r.read_exact(&mut stored).map_err(|_| SnapError::Corrupt("truncated trailer".into()))?;
            if u32::from_be_bytes(stored) != computed {
                return Err(SnapError::Corrupt("checksum mismatch".into()));
            }
            if count != self.count {
                return Err(SnapError::Corrupt(format!("{} records, trailer says {count}", self.count)));
            }
            self.done = true;
            return Ok(None);
        }
        if klen as usize > KEY_BYTES_MAX {
            return Err(SnapError::Corrupt(format!("a key of {klen} bytes")));
        }
        let key = self.take(klen as usize)?;
        let vlen = self.u32()? as usize;
        if vlen > VALUE_BYTES_MAX {
            return Err(SnapError::Corrupt(format!("a value of {vlen} bytes")));
        }
        let value = self.take(vlen)?;
        self.count += 1;
        Ok(Some((key, value)))
    }

    /// Reads to the end, checking every record and the trailer; returns the record count.
    pub fn verify(mut self) -> Result<u64, SnapError> {
        while self.next_record()?.is_some() {}
        Ok(self.count)
    }
}

/// Where a group's snapshot files live: `DIR/<group>/`.
pub fn group_dir(root: &Path, group: crate::GroupId) -> PathBuf {
    root.join(format!("{group:05}"))
}

/// Syncs a directory, so that files created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapWriter::new(Vec::new(), b"header").unwrap();
        for i in 0..100u32 {
            w.record(format!("k{i}").as_bytes(), &vec![i as u8; i as usize]).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_and_refuses_any_damage() {
        let bytes = sample();
        let (mut r, header) = SnapReader::open(bytes.as_slice()).unwrap();
        assert_eq!(header, b"header");
        let mut n = 0;
        while let Some((k, v)) = r.next_record().unwrap() {
            assert_eq!(k, format!("k{n}").as_bytes());
            assert_eq!(v.len(), n);
            n += 1;
        }
        assert_eq!(n, 100);
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let r = SnapReader::open(bad.as_slice()).and_then(|(r, _)| r.verify());
            assert!(r.is_err(), "a flipped byte at {i} went unnoticed");
        }
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let r = SnapReader::open(&bytes[..cut]).and_then(|(r, _)| r.verify());
            assert!(r.is_err(), "a snapshot cut at {cut} was accepted");
        }
    }

    #[test]
    fn absurd_lengths_are_refused_without_allocating_them() {
        let mut bytes = sample();
        // The first record's key length, right after magic, version, header length and header.
        let at = 8 + 4 + 4 + 6;
        bytes[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
        let r = SnapReader::open(bytes.as_slice()).and_then(|(r, _)| r.verify());
        assert!(matches!(r, Err(SnapError::Corrupt(_))));
    }
}
