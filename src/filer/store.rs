//! Downloads written so that nothing incomplete ever looks complete.
//!
//! Bytes go to a hidden part file (`.<name>.p2pipe-part`) in the target folder, hashed
//! as they arrive. Only when the size and the SHA-256 match is the part file synced and
//! renamed into place, in one step. An interrupted download leaves its part file, and
//! the next [`Download::begin`] resumes from its end (re-hashing what is there); a part
//! file that turns out wrong is deleted.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::shared::{check_name, hex, PART_SUFFIX};

/// Errors of a download.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The remote name cannot be saved under (see `shared::check_name`).
    #[error("cannot save {0:?}: not a plain file name")]
    BadName(String),
    /// More bytes came than the file has.
    #[error("download of {name} overran its size: {got} bytes for {size}")]
    Overrun {
        /// The file.
        name: String,
        /// Bytes received.
        got: u64,
        /// The size announced.
        size: u64,
    },
    /// The download ended short.
    #[error("download of {name} is incomplete: {got} of {size} bytes")]
    Short {
        /// The file.
        name: String,
        /// Bytes received.
        got: u64,
        /// The size announced.
        size: u64,
    },
    /// The bytes do not hash to what was announced; the part file was deleted.
    #[error("download of {name} failed verification: sha-256 {got}, expected {want}")]
    HashMismatch {
        /// The file.
        name: String,
        /// The hash of what arrived.
        got: String,
        /// The hash announced.
        want: String,
    },
    /// A different file is already there.
    #[error("{0} already exists with other content")]
    Exists(PathBuf),
    /// The file system failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A download in progress.
#[derive(Debug)]
pub struct Download {
    name: String,
    final_path: PathBuf,
    part_path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
    size: u64,
    sha256: [u8; 32],
}

/// Where a download of `name` into `dir` ends up, and its part file.
///
/// # Errors
///
/// A name that is not a plain file name (as the shared folder would serve it).
pub fn paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), StoreError> {
    check_name(name).map_err(|_| StoreError::BadName(name.chars().take(80).collect()))?;
    let base = name.rsplit('/').next().unwrap_or(name);
    Ok((dir.join(base), dir.join(format!(".{base}{PART_SUFFIX}"))))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a [`Download::begin`] found things.
#[derive(Debug)]
pub enum Begun {
    /// The file is already in place with the right content.
    Complete(PathBuf),
    /// Bytes are wanted from [`Download::offset`] on.
    Resume(Box<Download>),
}

impl Download {
    /// Starts or resumes the download of `name` (`size` bytes, SHA-256 `sha256`) into
    /// `dir`. A part file left by an earlier attempt is kept and re-hashed, and the
    /// download goes on from its end; one longer than the file is discarded.
    ///
    /// # Errors
    ///
    /// A bad name, a file of other content already in place, or a file-system error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at worst the part file stays, for the next attempt.
    pub async fn begin(
        dir: &Path,
        name: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<Begun, StoreError> {
        let (final_path, part_path) = paths(dir, name)?;
        if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
            let (h, n) = super::shared::sha256_file(&final_path)
                .await
                .map_err(io_err(&final_path))?;
            if h == sha256 && n == size {
                return Ok(Begun::Complete(final_path));
            }
            return Err(StoreError::Exists(final_path));
        }
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        if let Ok(mut part) = tokio::fs::File::open(&part_path).await {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = part.read(&mut buf).await.map_err(io_err(&part_path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
            if written > size {
                tokio::fs::remove_file(&part_path)
                    .await
                    .map_err(io_err(&part_path))?;
                hasher = Sha256::new();
                written = 0;
            }
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part_path)
            .await
            .map_err(io_err(&part_path))?;
        Ok(Begun::Resume(Box::new(Download {
            name: name.to_owned(),
            final_path,
            part_path,
            file,
            hasher,
            written,
            size,
            sha256,
        })))
    }

    /// The offset to ask the next bytes from.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The size of the whole file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The part file being written.
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// Appends the next bytes.
    ///
    /// # Errors
    ///
    /// More bytes than the file has, or a file-system error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: part of `chunk` may have been written but not hashed. Drop the
    /// download after a cancel and begin again (the part file is re-hashed).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let got = self.written + chunk.len() as u64;
        if got > self.size {
            return Err(StoreError::Overrun {
                name: self.name.clone(),
                got,
                size: self.size,
            });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err(&self.part_path))?;
        self.hasher.update(chunk);
        self.written = got;
        Ok(())
    }

    /// Waits until every byte written so far is in the part file (tokio's file writes
    /// finish in the background). Call it before giving up on a download, so that the
    /// next attempt resumes from all of it.
    ///
    /// # Errors
    ///
    /// A file-system error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.file.flush().await.map_err(io_err(&self.part_path))
    }

    /// Checks the size and hash, syncs, and renames the part file into place.
    ///
    /// # Errors
    ///
    /// [`StoreError::Short`] (the part file stays, to resume), [`StoreError::HashMismatch`]
    /// (the part file is deleted), or a file-system error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the file is either renamed or not.
    pub async fn finish(mut self) -> Result<PathBuf, StoreError> {
        if self.written < self.size {
            return Err(StoreError::Short {
                name: self.name,
                got: self.written,
                size: self.size,
            });
        }
        let got: [u8; 32] = self.hasher.finalize().into();
        if got != self.sha256 {
            drop(self.file);
            let _ = tokio::fs::remove_file(&self.part_path).await;
            return Err(StoreError::HashMismatch {
                name: self.name,
                got: hex(&got),
                want: hex(&self.sha256),
            });
        }
        self.file.flush().await.map_err(io_err(&self.part_path))?;
        self.file
            .sync_all()
            .await
            .map_err(io_err(&self.part_path))?;
        drop(self.file);
        tokio::fs::rename(&self.part_path, &self.final_path)
            .await
            .map_err(io_err(&self.final_path))?;
        Ok(self.final_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    async fn begin(dir: &Path, name: &str, body: &[u8]) -> Download {
        match Download::begin(dir, name, body.len() as u64, sha(body))
            .await
            .unwrap()
        {
            Begun::Resume(d) => *d,
            Begun::Complete(p) => panic!("already complete at {}", p.display()),
        }
    }

    #[tokio::test]
    async fn interrupted_download_resumes_and_lands_verified() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut d = begin(dir.path(), "data.bin", &body).await;
        d.write(&body[..70_000]).await.unwrap();
        let part = d.part_path().to_path_buf();
        drop(d); // interrupted
        assert!(
            !dir.path().join("data.bin").exists(),
            "nothing looks complete"
        );
        assert!(part.exists());
        let mut d = begin(dir.path(), "data.bin", &body).await;
        assert_eq!(d.offset(), 70_000);
        d.write(&body[70_000..]).await.unwrap();
        let path = d.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert!(!part.exists());
        // Again: already complete.
        let again = Download::begin(dir.path(), "data.bin", body.len() as u64, sha(&body))
            .await
            .unwrap();
        assert!(matches!(again, Begun::Complete(_)));
    }

    #[tokio::test]
    async fn wrong_bytes_are_refused_and_the_part_file_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"the right content".to_vec();
        let mut d = begin(dir.path(), "f.txt", &body).await;
        let part = d.part_path().to_path_buf();
        d.write(b"the wrong content").await.unwrap();
        let err = d.finish().await.unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        assert!(!part.exists());
        assert!(!dir.path().join("f.txt").exists());
    }

    #[tokio::test]
    async fn short_and_overrun_downloads_fail() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"0123456789".to_vec();
        let mut d = begin(dir.path(), "g", &body).await;
        assert!(matches!(
            d.write(b"0123456789x").await,
            Err(StoreError::Overrun { .. })
        ));
        d.write(b"01234").await.unwrap();
        let err = d.finish().await.unwrap_err();
        assert!(matches!(err, StoreError::Short { got: 5, .. }), "{err}");
        assert!(!dir.path().join("g").exists());
    }

    #[tokio::test]
    async fn remote_names_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", ".hidden", "a b"] {
            assert!(matches!(
                Download::begin(dir.path(), bad, 1, [0; 32]).await,
                Err(StoreError::BadName(_))
            ));
        }
        // A name with folders is saved under its last component.
        let (f, p) = paths(dir.path(), "music/song.ogg").unwrap();
        assert_eq!(f, dir.path().join("song.ogg"));
        assert_eq!(p, dir.path().join(".song.ogg.p2pipe-part"));
    }

    #[tokio::test]
    async fn a_different_file_in_place_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h"), b"mine").unwrap();
        let err = Download::begin(dir.path(), "h", 5, sha(b"yours"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"mine");
    }
}
