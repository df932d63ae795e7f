//! Downloads that cannot lie about what landed on disk.
//!
//! - **One writer per part file.** Bytes go to a hidden part file
//!   (`.<name>.p2pipe-part`) beside the final path. It is opened without following links
//!   and held under an exclusive OS lock for the whole download, so a second download of
//!   the same file, from this process or another, is refused with
//!   [`StoreError::Busy`] instead of appending to the same file.
//! - **Verified on disk.** [`Download::finish`] syncs the part file, then reads it back
//!   through the locked handle and hashes exactly those bytes. Only when the size and the
//!   SHA-256 match is it put in place; a part file that someone else truncated or
//!   appended to fails here, and is deleted.
//! - **A final name is never replaced by accident.** The verified file is linked to its
//!   final name, which fails if that name exists; only a [`Destination`] made with
//!   [`Destination::replace`] renames over an existing file. A file already in place with
//!   the right content makes the download [`Begun::Complete`], checked by hashing it.
//! - **Resumable.** An interrupted download leaves its part file; the next
//!   [`Download::begin`] hashes what is there and goes on from its end.
//!   [`Download::prefix_sha256`] lets a client check those bytes against the owner's copy
//!   before asking for the rest.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::msg::hex;
use super::shared::{check_name, SharedError, PART_SUFFIX};

/// How many times [`Download::begin`] reopens a part file that was renamed or replaced
/// between its open and its lock, before it gives up as busy.
const LOCK_ATTEMPTS: usize = 8;

/// Errors of a download.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The name is not one a node shares or the protocol can carry (see
    /// `shared::check_name`).
    #[error("cannot fetch {name:?}: not a name a node shares ({why})")]
    BadName {
        /// The name (at most 80 characters of it).
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// Another download of the same file holds its part file.
    #[error(
        "{path} is already being fetched (its part file {part} is locked by another download)"
    )]
    Busy {
        /// The final path.
        path: PathBuf,
        /// The locked part file.
        part: PathBuf,
    },
    /// The folder to save into does not exist.
    #[error("cannot save to {0}: no such folder")]
    NoFolder(PathBuf),
    /// A path that must be a folder is something else.
    #[error("cannot save to {0}: not a folder")]
    NotAFolder(PathBuf),
    /// A path that must be a regular file (or absent) is something else.
    #[error("cannot save to {0}: it exists and is not a regular file")]
    NotAFile(PathBuf),
    /// A different file is already there.
    #[error("{0} already exists with other content")]
    Exists(PathBuf),
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
    /// The part file does not hold what was written to it: someone else truncated,
    /// extended, moved or rewrote it. It was deleted where it was still ours.
    #[error("part file {part} changed during the download ({what}); it was discarded, rerun to fetch again")]
    Tampered {
        /// The part file.
        part: PathBuf,
        /// What was found.
        what: String,
    },
    /// The bytes on disk do not hash to what was announced; the part file was deleted.
    #[error("download of {name} failed verification: sha-256 on disk {got}, expected {want}")]
    HashMismatch {
        /// The file.
        name: String,
        /// The hash of what is on disk.
        got: String,
        /// The hash announced.
        want: String,
    },
    /// The file system failed.
    #[error("cannot write {path}: {message}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error's kind.
        kind: io::ErrorKind,
        /// What the OS said.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// Where a download lands: its final path, its part file beside it, and whether an
/// existing file of other content may be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    name: String,
    path: PathBuf,
    part: PathBuf,
    replace: bool,
}

impl Destination {
    /// `name` (as the node shares it) saved under its last component in `dir`.
    ///
    /// # Errors
    ///
    /// A name that is not a plain file name (as the shared folder would serve it).
    pub fn in_dir(dir: &Path, name: &str) -> Result<Destination, StoreError> {
        let base = base_name(name)?;
        Ok(Destination::at(name, dir.join(base)))
    }

    /// Where `p2pipe fetch NAME -o OUT` saves: into `out` when it is a folder (or ends
    /// in `/`, in which case the folder must exist), else at `out` itself, a file in an
    /// existing folder. Reads the file system (metadata only) and touches nothing.
    ///
    /// # Errors
    ///
    /// A bad name, a folder that does not exist, a path through something that is not a
    /// folder, or an `out` that exists and is neither a folder nor a regular file.
    pub fn output(out: &Path, name: &str) -> Result<Destination, StoreError> {
        let base = base_name(name)?;
        let names_folder = out.as_os_str().to_string_lossy().ends_with('/');
        // A path through a file (`file.txt/x`) is absent here; its parent says why.
        let absent = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            )
        };
        match std::fs::metadata(out) {
            Ok(m) if m.is_dir() => return Ok(Destination::at(name, out.join(base))),
            Ok(_) if names_folder => return Err(StoreError::NotAFolder(out.to_path_buf())),
            Err(e) if absent(&e) && names_folder => {
                return Err(StoreError::NoFolder(out.to_path_buf()))
            }
            Err(e) if !absent(&e) => return Err(io_err(out)(e)),
            _ => {}
        }
        match std::fs::symlink_metadata(out) {
            Ok(m) if !m.is_file() => return Err(StoreError::NotAFile(out.to_path_buf())),
            _ => {}
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&parent) {
            Ok(m) if m.is_dir() => Ok(Destination::at(name, out.to_path_buf())),
            Ok(_) => Err(StoreError::NotAFolder(parent)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoFolder(parent)),
            Err(e) => Err(io_err(&parent)(e)),
        }
    }

    fn at(name: &str, path: PathBuf) -> Destination {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = path.with_file_name(format!(".{file}{PART_SUFFIX}"));
        Destination {
            name: name.to_owned(),
            path,
            part,
            replace: false,
        }
    }

    /// Allows replacing an existing file of other content (`--force`). It is replaced
    /// only by a verified download, in one rename.
    pub fn replace(mut self, yes: bool) -> Destination {
        self.replace = yes;
        self
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The part file.
    pub fn part_path(&self) -> &Path {
        &self.part
    }
}

fn base_name(name: &str) -> Result<&str, StoreError> {
    match check_name(name) {
        Ok(()) => {}
        Err(SharedError::BadName { name, why }) => return Err(StoreError::BadName { name, why }),
        Err(_) => {
            return Err(StoreError::BadName {
                name: name.chars().take(80).collect(),
                why: "refused",
            })
        }
    }
    Ok(name.rsplit('/').next().unwrap_or(name))
}

/// What the owner says the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// How a [`Download::begin`] found things.
#[derive(Debug)]
pub enum Begun {
    /// The file is already in place, and its bytes on disk hash to the expected SHA-256.
    Complete(PathBuf),
    /// Bytes are wanted from [`Download::offset`] on.
    Resume(Box<Download>),
}

/// A file put in place by [`Download::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// The SHA-256 of the bytes read back from disk.
    pub sha256: [u8; 32],
    /// Whether that hash was checked against the owner's (false for an owner that gives
    /// none).
    pub verified: bool,
}

/// A download in progress: it holds the part file's lock until it is finished or
/// dropped.
#[derive(Debug)]
pub struct Download {
    dest: Destination,
    file: tokio::fs::File,
    written: u64,
    size: Option<u64>,
    sha256: Option<[u8; 32]>,
    prefix: [u8; 32],
}

impl Download {
    /// Starts or resumes a download to `dest`. With `expected`, a part file left by an
    /// earlier attempt is hashed and the download goes on from its end (one longer than
    /// the file is emptied); a file already at the final path with the expected content
    /// makes it [`Begun::Complete`]. Without `expected` (an owner that gives no hash),
    /// the download starts from zero and its size comes from [`announce`](Self::announce).
    ///
    /// # Errors
    ///
    /// [`StoreError::Busy`] while another download holds the part file,
    /// [`StoreError::Exists`] for a file of other content in place (unless the
    /// destination may replace it), a part file that is not a regular file, or a
    /// file-system error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at worst the part file stays, for the next attempt.
    pub async fn begin(
        dest: &Destination,
        expected: Option<Expected>,
    ) -> Result<Begun, StoreError> {
        let d = dest.clone();
        let found = tokio::task::spawn_blocking(move || begin_blocking(&d, expected))
            .await
            .map_err(|e| io_err(dest.part_path())(io::Error::other(e.to_string())))??;
        Ok(match found {
            Found::Complete => Begun::Complete(dest.path.clone()),
            Found::Part { file, len, prefix } => Begun::Resume(Box::new(Download {
                dest: dest.clone(),
                file: tokio::fs::File::from_std(file),
                written: len,
                size: expected.map(|e| e.size),
                sha256: expected.map(|e| e.sha256),
                prefix,
            })),
        })
    }

    /// The offset to ask the next bytes from.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The SHA-256 of the [`offset`](Self::offset) bytes found in the part file when the
    /// download began, to compare with the owner's copy before resuming.
    pub fn prefix_sha256(&self) -> [u8; 32] {
        self.prefix
    }

    /// Empties the part file and starts again from zero (its bytes did not match the
    /// owner's).
    ///
    /// # Errors
    ///
    /// A file-system error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: drop the download after a cancel and begin again.
    pub async fn restart(&mut self) -> Result<(), StoreError> {
        let part = self.dest.part.clone();
        self.file.set_len(0).await.map_err(io_err(&part))?;
        tokio::io::AsyncSeekExt::seek(&mut self.file, SeekFrom::Start(0))
            .await
            .map_err(io_err(&part))?;
        self.written = 0;
        self.prefix = Sha256::digest([]).into();
        Ok(())
    }

    /// Sets the size from a reply's header: the whole file for an owner without a hash,
    /// or checks that `offset + len` is the size already known.
    ///
    /// # Errors
    ///
    /// [`StoreError::Overrun`] or [`StoreError::Short`] when the reply does not end where
    /// the file does.
    pub fn announce(&mut self, len: u64) -> Result<(), StoreError> {
        let end = self.written.saturating_add(len);
        match self.size {
            None => {
                self.size = Some(end);
                Ok(())
            }
            Some(size) if end > size => Err(StoreError::Overrun {
                name: self.dest.name.clone(),
                got: end,
                size,
            }),
            Some(size) if end < size => Err(StoreError::Short {
                name: self.dest.name.clone(),
                got: end,
                size,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Appends the next bytes.
    ///
    /// # Errors
    ///
    /// More bytes than the file has, or a file-system error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: part of `chunk` may have been written. Drop the download after a
    /// cancel and begin again (the part file is re-hashed).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let got = self.written + chunk.len() as u64;
        if let Some(size) = self.size.filter(|s| got > *s) {
            return Err(StoreError::Overrun {
                name: self.dest.name.clone(),
                got,
                size,
            });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err(&self.dest.part))?;
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
        self.file.flush().await.map_err(io_err(&self.dest.part))
    }

    /// Syncs the part file, hashes what is on disk, and puts it in place when the size
    /// and hash match. The bytes hashed are read back through the locked handle, and the
    /// final name gets that same file.
    ///
    /// # Errors
    ///
    /// [`StoreError::Short`] (the part file stays, to resume), [`StoreError::Tampered`]
    /// or [`StoreError::HashMismatch`] (the part file is deleted), [`StoreError::Exists`]
    /// when a file of other content took the final name meanwhile (the verified part
    /// file stays), or a file-system error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the file is either put in place or not; the work goes on to its end
    /// on the blocking pool.
    pub async fn finish(mut self) -> Result<Landed, StoreError> {
        let size = self.size.unwrap_or(self.written);
        if self.written < size {
            return Err(StoreError::Short {
                name: self.dest.name.clone(),
                got: self.written,
                size,
            });
        }
        self.flush().await?;
        let file = self.file.into_std().await;
        let dest = self.dest;
        let sha256 = self.sha256;
        let part = dest.part.clone();
        tokio::task::spawn_blocking(move || finish_blocking(file, &dest, size, sha256))
            .await
            .map_err(|e| io_err(&part)(io::Error::other(e.to_string())))?
    }
}

/// What [`begin_blocking`] found.
enum Found {
    Complete,
    Part {
        file: File,
        len: u64,
        prefix: [u8; 32],
    },
}

fn begin_blocking(dest: &Destination, expected: Option<Expected>) -> Result<Found, StoreError> {
    if let Some(done) = check_final(dest, expected)? {
        return Ok(done);
    }
    let mut file = lock_part(dest)?;
    // Another download may have put a file in place between the check and the lock.
    // The part file is ours while the lock is held: a complete file makes it useless,
    // and a refusal leaves it only if it holds bytes of an earlier attempt.
    match check_final(dest, expected) {
        Ok(None) => {}
        Ok(Some(done)) => {
            let _ = std::fs::remove_file(&dest.part);
            return Ok(done);
        }
        Err(e) => {
            if file.metadata().is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&dest.part);
            }
            return Err(e);
        }
    }
    let part = &dest.part;
    let (mut prefix, mut len) = hash_from_start(&mut file).map_err(io_err(part))?;
    let keep = match expected {
        Some(e) => len <= e.size,
        None => len == 0,
    };
    if !keep {
        file.set_len(0).map_err(io_err(part))?;
        prefix = Sha256::digest([]).into();
        len = 0;
    }
    file.seek(SeekFrom::Start(len)).map_err(io_err(part))?;
    Ok(Found::Part { file, len, prefix })
}

/// `Some` when the final path already settles the download: complete with the expected
/// bytes, or a refusal; `None` when there is nothing there (or it may be replaced).
fn check_final(
    dest: &Destination,
    expected: Option<Expected>,
) -> Result<Option<Found>, StoreError> {
    let path = &dest.path;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
        Ok(m) if !m.is_file() => return Err(StoreError::NotAFile(path.clone())),
        Ok(_) => {}
    }
    if let Some(e) = expected {
        let mut f = File::open(path).map_err(io_err(path))?;
        let (h, n) = hash_from_start(&mut f).map_err(io_err(path))?;
        if h == e.sha256 && n == e.size {
            return Ok(Some(Found::Complete));
        }
    }
    if dest.replace {
        Ok(None)
    } else {
        Err(StoreError::Exists(path.clone()))
    }
}

/// Opens the part file (creating it, never through a link) and takes its exclusive lock.
/// A part file renamed or replaced between the open and the lock is opened again.
fn lock_part(dest: &Destination) -> Result<File, StoreError> {
    let part = &dest.part;
    for _ in 0..LOCK_ATTEMPTS {
        let file = sys::open_no_follow(part).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => StoreError::NotAFile(part.clone()),
            _ => io_err(part)(e),
        })?;
        if !file.metadata().map_err(io_err(part))?.is_file() {
            return Err(StoreError::NotAFile(part.clone()));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Busy {
                    path: dest.path.clone(),
                    part: part.clone(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(part)(e)),
        }
        if sys::names(&file, part).map_err(io_err(part))? {
            return Ok(file);
        }
    }
    Err(StoreError::Busy {
        path: dest.path.clone(),
        part: part.clone(),
    })
}

/// Hashes a file from its start; returns the hash and the length read.
fn hash_from_start(file: &mut File) -> io::Result<([u8; 32], u64)> {
    file.seek(SeekFrom::Start(0))?;
    hash_all(file)
}

/// Hashes everything `r` gives; returns the hash and the length read.
fn hash_all(mut r: impl Read) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// The length and modification time of an open file: what changes if anyone writes to
/// it.
fn stamp(file: &File) -> io::Result<(u64, Option<SystemTime>)> {
    let m = file.metadata()?;
    Ok((m.len(), m.modified().ok()))
}

fn finish_blocking(
    mut file: File,
    dest: &Destination,
    size: u64,
    want: Option<[u8; 32]>,
) -> Result<Landed, StoreError> {
    let part = &dest.part;
    let discard = |file: &File, what: String| {
        if sys::names(file, part).unwrap_or(false) {
            let _ = std::fs::remove_file(part);
        }
        StoreError::Tampered {
            part: part.clone(),
            what,
        }
    };
    if !sys::names(&file, part).map_err(io_err(part))? {
        return Err(discard(&file, "it was moved or replaced".into()));
    }
    file.sync_all().map_err(io_err(part))?;
    let before = stamp(&file).map_err(io_err(part))?;
    let (got, len) = hash_from_start(&mut file).map_err(io_err(part))?;
    if len != size {
        return Err(discard(
            &file,
            format!("{len} bytes on disk, {size} written"),
        ));
    }
    if let Some(want) = want.filter(|w| *w != got) {
        if sys::names(&file, part).unwrap_or(false) {
            let _ = std::fs::remove_file(part);
        }
        return Err(StoreError::HashMismatch {
            name: dest.name.clone(),
            got: hex(&got),
            want: hex(&want),
        });
    }
    place(dest, want)?;
    // The name now holds the file just hashed; make sure nobody wrote to it meanwhile.
    if stamp(&file).map_err(io_err(&dest.path))? != before {
        if sys::names(&file, &dest.path).unwrap_or(false) {
            let _ = std::fs::remove_file(&dest.path);
        }
        return Err(StoreError::Tampered {
            part: part.clone(),
            what: "it was written to while being verified".into(),
        });
    }
    Ok(Landed {
        path: dest.path.clone(),
        size,
        sha256: got,
        verified: want.is_some(),
    })
}

/// Gives the verified part file its final name: a rename over the old file when the
/// destination may replace, else a link that fails when the name is taken.
fn place(dest: &Destination, want: Option<[u8; 32]>) -> Result<(), StoreError> {
    let (part, path) = (&dest.part, &dest.path);
    if dest.replace {
        return std::fs::rename(part, path).map_err(io_err(path));
    }
    match std::fs::hard_link(part, path) {
        Ok(()) => std::fs::remove_file(part).map_err(io_err(part)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Someone put a file there meanwhile; it is fine if it is this one.
            let expected = want.map(|sha256| Expected {
                size: std::fs::metadata(part).map(|m| m.len()).unwrap_or(0),
                sha256,
            });
            match check_final(dest, expected) {
                Ok(Some(Found::Complete)) => {
                    let _ = std::fs::remove_file(part);
                    Ok(())
                }
                Ok(_) => Err(StoreError::Exists(path.clone())),
                Err(e) => Err(e),
            }
        }
        // A file system without links: rename, after checking the name is free.
        Err(_) if !path.exists() => std::fs::rename(part, path).map_err(io_err(path)),
        Err(_) => Err(StoreError::Exists(path.clone())),
    }
}

/// Hashes the first `len` bytes of the file at `path`, for an owner asked to prove the
/// start of a file (`FPFX`). `None` when the file is shorter than `len`.
///
/// # Errors
///
/// The file cannot be opened or read.
///
/// # Cancel safety
///
/// Cancel safe; the read goes on to its end on the blocking pool.
pub async fn sha256_prefix(path: &Path, len: u64) -> io::Result<Option<[u8; 32]>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (hash, got) = hash_all(File::open(&path)?.take(len))?;
        Ok((got == len).then_some(hash))
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?
}

#[cfg(unix)]
mod sys {
    //! Part-file handling that needs Unix: opening without following a link, and
    //! telling whether a path still names an open file.

    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::path::Path;

    /// Opens (creating) `path` for reading and writing; a symbolic link there fails
    /// with `InvalidInput` instead of being followed.
    pub fn open_no_follow(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::new(io::ErrorKind::InvalidInput, "a symbolic link")
                } else {
                    e
                }
            })
    }

    /// Whether `path` names `file` now (same device and inode).
    pub fn names(file: &File, path: &Path) -> io::Result<bool> {
        let a = file.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(b) => Ok(a.dev() == b.dev() && a.ino() == b.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(not(unix))]
mod sys {
    //! Part-file handling without Unix inodes: a link is refused by a metadata check
    //! before the open, and a path is taken to name the file it opened.

    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::Path;

    /// Opens (creating) `path` for reading and writing, refusing a symbolic link.
    pub fn open_no_follow(path: &Path) -> io::Result<File> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a symbolic link",
            ));
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    /// Whether `path` still exists (no inode to compare).
    pub fn names(_file: &File, path: &Path) -> io::Result<bool> {
        Ok(path.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::filer::testing::within;

    fn expected(b: &[u8]) -> Option<Expected> {
        Some(Expected {
            size: b.len() as u64,
            sha256: Sha256::digest(b).into(),
        })
    }

    async fn begin(dest: &Destination, body: &[u8]) -> Download {
        match within(Download::begin(dest, expected(body))).await.unwrap() {
            Begun::Resume(d) => *d,
            Begun::Complete(p) => panic!("already complete at {}", p.display()),
        }
    }

    fn into(dir: &Path, name: &str) -> Destination {
        Destination::in_dir(dir, name).unwrap()
    }

    #[tokio::test]
    async fn interrupted_download_resumes_and_lands_verified() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let dest = into(dir.path(), "data.bin");
        let mut d = begin(&dest, &body).await;
        within(d.write(&body[..70_000])).await.unwrap();
        within(d.flush()).await.unwrap();
        drop(d); // interrupted
        assert!(!dest.path().exists(), "nothing looks complete");
        assert!(dest.part_path().exists());
        let mut d = begin(&dest, &body).await;
        assert_eq!(d.offset(), 70_000);
        let want: [u8; 32] = Sha256::digest(&body[..70_000]).into();
        assert_eq!(d.prefix_sha256(), want);
        within(d.write(&body[70_000..])).await.unwrap();
        let landed = within(d.finish()).await.unwrap();
        assert!(landed.verified);
        assert_eq!(std::fs::read(&landed.path).unwrap(), body);
        assert!(!dest.part_path().exists());
        // Again: already complete, checked on disk.
        let again = within(Download::begin(&dest, expected(&body)))
            .await
            .unwrap();
        assert!(matches!(again, Begun::Complete(_)));
        assert!(
            !dest.part_path().exists(),
            "a complete file leaves no part file"
        );
    }

    #[tokio::test]
    async fn a_second_download_of_the_same_file_is_refused_while_the_first_runs() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"only one writer at a time".to_vec();
        let dest = into(dir.path(), "one.txt");
        let mut first = begin(&dest, &body).await;
        within(first.write(&body[..5])).await.unwrap();
        let err = within(Download::begin(&dest, expected(&body)))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("already being fetched"), "{err}");
        // A lock held by a plain file handle (another process's download) counts too.
        within(first.write(&body[5..])).await.unwrap();
        within(first.finish()).await.unwrap();
        assert_eq!(std::fs::read(dest.path()).unwrap(), body);
        let other = into(dir.path(), "two.txt");
        let held = File::create(other.part_path()).unwrap();
        held.lock().unwrap();
        let err = within(Download::begin(&other, expected(b"x")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        drop(held);
        assert!(matches!(
            within(Download::begin(&other, expected(b"x")))
                .await
                .unwrap(),
            Begun::Resume(_)
        ));
    }

    #[tokio::test]
    async fn wrong_bytes_are_refused_and_the_part_file_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"the right content".to_vec();
        let dest = into(dir.path(), "f.txt");
        let mut d = begin(&dest, &body).await;
        within(d.write(b"the wrong content")).await.unwrap();
        let err = within(d.finish()).await.unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        assert!(!dest.part_path().exists());
        assert!(!dest.path().exists());
    }

    #[tokio::test]
    async fn a_part_file_truncated_or_appended_to_by_someone_else_never_lands() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        // (how many bytes are written before the tampering, what is done)
        let cases = [
            (50_000, "truncate"),
            (100_000, "truncate"),
            (100_000, "append"),
            (100_000, "rewrite"),
        ];
        for (before, tamper) in cases {
            let dir = tempfile::tempdir().unwrap();
            let dest = into(dir.path(), "t.bin");
            let mut d = begin(&dest, &body).await;
            within(d.write(&body[..before])).await.unwrap();
            within(d.flush()).await.unwrap();
            // Someone ignores the lock (it is advisory) and changes the part file.
            let mut other = std::fs::OpenOptions::new()
                .write(true)
                .open(dest.part_path())
                .unwrap();
            match tamper {
                "truncate" => other.set_len(10_000).unwrap(),
                "append" => {
                    other.seek(SeekFrom::End(0)).unwrap();
                    std::io::Write::write_all(&mut other, b"extra").unwrap();
                }
                _ => std::io::Write::write_all(&mut other, b"XXXX").unwrap(),
            }
            drop(other);
            within(d.write(&body[before..])).await.unwrap();
            let err = within(d.finish()).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Tampered { .. } | StoreError::HashMismatch { .. }
                ),
                "{tamper}: {err}"
            );
            assert!(!dest.path().exists(), "{tamper}: nothing landed");
            assert!(!dest.part_path().exists(), "{tamper}: part file discarded");
        }
    }

    #[tokio::test]
    async fn short_and_overrun_downloads_fail() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"0123456789".to_vec();
        let dest = into(dir.path(), "g");
        let mut d = begin(&dest, &body).await;
        assert!(matches!(
            within(d.write(b"0123456789x")).await,
            Err(StoreError::Overrun { .. })
        ));
        assert!(matches!(d.announce(11), Err(StoreError::Overrun { .. })));
        assert!(matches!(d.announce(9), Err(StoreError::Short { .. })));
        d.announce(10).unwrap();
        within(d.write(b"01234")).await.unwrap();
        let err = within(d.finish()).await.unwrap_err();
        assert!(matches!(err, StoreError::Short { got: 5, .. }), "{err}");
        assert!(!dest.path().exists());
    }

    #[tokio::test]
    async fn an_unhashed_download_takes_its_size_from_the_reply_and_is_not_called_verified() {
        let dir = tempfile::tempdir().unwrap();
        let dest = into(dir.path(), "plain.txt");
        std::fs::write(dest.part_path(), b"stale bytes of unknown origin").unwrap();
        let mut d = match within(Download::begin(&dest, None)).await.unwrap() {
            Begun::Resume(d) => d,
            Begun::Complete(_) => panic!("nothing expected"),
        };
        assert_eq!(d.offset(), 0, "without a hash nothing can be resumed");
        d.announce(5).unwrap();
        within(d.write(b"hello")).await.unwrap();
        let landed = within(d.finish()).await.unwrap();
        assert!(!landed.verified);
        assert_eq!(landed.sha256, <[u8; 32]>::from(Sha256::digest(b"hello")));
        assert_eq!(std::fs::read(dest.path()).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn remote_names_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", ".hidden", "a b", ""] {
            assert!(matches!(
                Destination::in_dir(dir.path(), bad),
                Err(StoreError::BadName { .. })
            ));
        }
        // A name with folders is saved under its last component.
        let d = into(dir.path(), "music/song.ogg");
        assert_eq!(d.path(), dir.path().join("song.ogg"));
        assert_eq!(d.part_path(), dir.path().join(".song.ogg.p2pipe-part"));
    }

    #[tokio::test]
    async fn a_different_file_in_place_is_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h"), b"mine").unwrap();
        let dest = into(dir.path(), "h");
        let err = within(Download::begin(&dest, expected(b"yours")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"mine");
        assert!(!dest.part_path().exists(), "a refusal creates nothing");
        // With leave to replace: only a verified download replaces it.
        let dest = dest.replace(true);
        let mut d = begin(&dest, b"yours").await;
        within(d.write(b"YOURS")).await.unwrap();
        assert!(within(d.finish()).await.is_err());
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"mine");
        let mut d = begin(&dest, b"yours").await;
        within(d.write(b"yours")).await.unwrap();
        within(d.finish()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"yours");
    }

    #[tokio::test]
    async fn a_file_that_takes_the_name_during_the_download_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = into(dir.path(), "race.txt");
        let mut d = begin(&dest, b"downloaded").await;
        within(d.write(b"downloaded")).await.unwrap();
        std::fs::write(dest.path(), b"the user's own file").unwrap();
        let err = within(d.finish()).await.unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dest.path()).unwrap(), b"the user's own file");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_link_in_place_of_the_part_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"keep me").unwrap();
        let dest = into(dir.path(), "v.txt");
        std::os::unix::fs::symlink(&victim, dest.part_path()).unwrap();
        let err = within(Download::begin(&dest, expected(b"x")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotAFile(_)), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }

    #[test]
    fn output_names_a_folder_or_a_new_file_in_an_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file.txt"), b"x").unwrap();
        // An existing folder, with or without a slash.
        let o = Destination::output(d, "a/n.bin").unwrap();
        assert_eq!(o.path(), d.join("n.bin"));
        let slash = PathBuf::from(format!("{}/", d.display()));
        assert_eq!(
            Destination::output(&slash, "n.bin").unwrap().path(),
            d.join("n.bin")
        );
        // A new file in an existing folder; its part file sits beside it.
        let o = Destination::output(&d.join("new.bin"), "n.bin").unwrap();
        assert_eq!(o.path(), d.join("new.bin"));
        assert_eq!(o.part_path(), d.join(".new.bin.p2pipe-part"));
        // An existing file is a destination too; begin decides whether it is the same.
        assert!(Destination::output(&d.join("file.txt"), "n.bin").is_ok());
        // A folder that does not exist, named with a slash or as a parent.
        let missing = PathBuf::from(format!("{}/newdir/", d.display()));
        let err = Destination::output(&missing, "n.bin").unwrap_err();
        assert!(matches!(err, StoreError::NoFolder(_)), "{err}");
        assert!(err.to_string().contains("newdir"), "{err}");
        let err = Destination::output(&d.join("nope/x.bin"), "n.bin").unwrap_err();
        assert!(matches!(err, StoreError::NoFolder(_)), "{err}");
        // A file where a folder is wanted.
        let err = Destination::output(&d.join("file.txt/x"), "n.bin").unwrap_err();
        assert!(matches!(err, StoreError::NotAFolder(_)), "{err}");
        let file_slash = PathBuf::from(format!("{}/file.txt/", d.display()));
        assert!(Destination::output(&file_slash, "n.bin").is_err());
        assert!(!d.join("newdir").exists(), "nothing was created");
    }

    #[tokio::test]
    async fn the_prefix_of_a_file_hashes_as_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        std::fs::write(&p, &body).unwrap();
        for len in [0u64, 1, 262_144, 262_145, 300_000] {
            let want: [u8; 32] = Sha256::digest(&body[..len as usize]).into();
            assert_eq!(
                within(sha256_prefix(&p, len)).await.unwrap(),
                Some(want),
                "{len}"
            );
        }
        assert_eq!(within(sha256_prefix(&p, 300_001)).await.unwrap(), None);
    }
}
