//! The shared folder: which names may be served, and reading them safely.
//!
//! A name is served only if it is a relative path of plain components (no `..`, no
//! root, no empty or hidden component), whose real path (symlinks resolved) is a regular
//! file inside the folder. Names learned from other peers are never looked up here. Every
//! check runs on the blocking pool under a time limit, so a hung file system cannot hang
//! the node.
//!
//! A walk of the folder ([`SharedDir::index`]) also keeps the files it left out because the
//! protocol cannot carry their names (whitespace, control characters, a backslash, too
//! long, not UTF-8): [`SharedDir::skipped`] lists them, so that a user can be told.
//! Hidden files and downloads in progress are left out on purpose and not listed.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The most files listed from one folder.
pub const MAX_FILES: usize = 100_000;

/// The default time limit of one file-system check.
pub const DEFAULT_FS_TIMEOUT: Duration = Duration::from_secs(5);

/// The suffix of a download in progress; such files are never shared.
pub const PART_SUFFIX: &str = ".p2pipe-part";

/// Errors of the shared folder.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The name is not one this node serves: empty, absolute, with `..`, a hidden
    /// component, whitespace, or too long.
    #[error("refused file name {name:?}: {why}")]
    BadName {
        /// The name as asked.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// No such regular file inside the folder (or it leads outside through a link).
    #[error("file not found: {0}")]
    NotFound(String),
    /// The file system did not answer in time.
    #[error("file system check timed out after {0:?}")]
    Timeout(Duration),
    /// The file system failed.
    #[error("file system error on {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A file of the shared folder, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// The name it is shared under (a relative path with `/` separators).
    pub name: String,
    /// Its real path.
    pub path: PathBuf,
    /// Its size in bytes when checked.
    pub size: u64,
    /// Its modification time when checked.
    pub modified: Option<SystemTime>,
}

/// The most skipped names a walk keeps (see [`Skipped`]); the rest are only counted.
pub const MAX_SKIPPED_NAMES: usize = 100;

/// The files a walk left out because the protocol cannot carry their names.
///
/// Hidden files and folders and downloads in progress (`.p2pipe-part` files) are not counted:
/// they are left out on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// The first 100 names (lossily decoded; a folder's ends with `/`),
    /// each with why it cannot be carried, in the order the walk found them.
    pub names: Vec<(String, &'static str)>,
    /// How many in all.
    pub count: usize,
}

impl Skipped {
    fn add(&mut self, name: String, why: &'static str) {
        self.count += 1;
        if self.names.len() < MAX_SKIPPED_NAMES {
            self.names.push((name, why));
        }
    }
}

/// How long a walk of the folder answers searches before the next one (see
/// [`SharedDir::index`]).
pub const DEFAULT_INDEX_AGE: Duration = Duration::from_secs(2);

/// The shared folder. Clones share one index.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
    timeout: Duration,
    max_age: Duration,
    index: std::sync::Arc<tokio::sync::Mutex<Option<Index>>>,
}

/// The folder's files as one walk found them, and when.
#[derive(Debug)]
struct Index {
    at: std::time::Instant,
    files: std::sync::Arc<Vec<SharedFile>>,
    skipped: std::sync::Arc<Skipped>,
}

/// Runs a blocking file-system closure on the blocking pool under `limit`.
async fn blocking<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> Result<T, SharedError> + Send + 'static,
) -> Result<T, SharedError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(SharedError::Io {
            path: PathBuf::new(),
            source: io::Error::other(join.to_string()),
        }),
        Err(_) => Err(SharedError::Timeout(limit)),
    }
}

/// Checks a name's syntax: what may be asked for at all.
pub fn check_name(name: &str) -> Result<(), SharedError> {
    let bad = |why| {
        Err(SharedError::BadName {
            name: name.chars().take(80).collect(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("too long");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("whitespace or control characters");
    }
    if name.contains('\\') {
        return bad("backslash");
    }
    if name.starts_with('/') || Path::new(name).is_absolute() {
        return bad("absolute path");
    }
    for part in name.split('/') {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => return bad("relative path component"),
            p if p.starts_with('.') => return bad("hidden path component"),
            _ => {}
        }
    }
    if Path::new(name)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return bad("not a plain relative path");
    }
    if name.ends_with(PART_SUFFIX) {
        return bad("a download in progress");
    }
    Ok(())
}

impl SharedDir {
    /// Opens `path` as the shared folder.
    ///
    /// # Errors
    ///
    /// It is not a directory, cannot be read, or the check timed out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn open(path: impl AsRef<Path>, timeout: Duration) -> Result<SharedDir, SharedError> {
        let path = path.as_ref().to_path_buf();
        let root = blocking(timeout, move || {
            let root = std::fs::canonicalize(&path).map_err(|source| SharedError::Io {
                path: path.clone(),
                source,
            })?;
            if !root.is_dir() {
                return Err(SharedError::Io {
                    path,
                    source: io::Error::other("not a directory"),
                });
            }
            Ok(root)
        })
        .await?;
        Ok(SharedDir {
            root,
            timeout,
            max_age: DEFAULT_INDEX_AGE,
            index: Default::default(),
        })
    }

    #[cfg(test)]
    /// How long one walk of the folder answers [`index`](Self::index) (default
    /// [`DEFAULT_INDEX_AGE`]). Zero walks every time.
    pub fn index_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The folder's files, as [`list`](Self::list) gives them, from a walk at most
    /// [`index_max_age`](Self::index_max_age) old. Callers that come while a walk runs
    /// wait for that one walk and share its result, so a burst of searches costs one walk,
    /// not one each. A file added or removed shows after at most that age; serving a file
    /// always checks it afresh ([`resolve`](Self::resolve)).
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list). A failed walk is not kept.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a walk whose caller goes is finished by the blocking pool and dropped.
    pub async fn index(&self) -> Result<std::sync::Arc<Vec<SharedFile>>, SharedError> {
        Ok(self.fresh().await?.0)
    }

    /// The files the walk behind [`index`](Self::index) left out because the protocol
    /// cannot carry their names; from the same walk, at most as old.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    ///
    /// # Cancel safety
    ///
    /// As [`index`](Self::index).
    pub async fn skipped(&self) -> Result<std::sync::Arc<Skipped>, SharedError> {
        Ok(self.fresh().await?.1)
    }

    /// The index's two halves, walking again if it is too old.
    async fn fresh(
        &self,
    ) -> Result<(std::sync::Arc<Vec<SharedFile>>, std::sync::Arc<Skipped>), SharedError> {
        let mut ix = self.index.lock().await;
        if let Some(i) = ix.as_ref() {
            if i.at.elapsed() < self.max_age {
                return Ok((i.files.clone(), i.skipped.clone()));
            }
        }
        let at = std::time::Instant::now();
        let (files, skipped) = self.walk().await?;
        let (files, skipped) = (std::sync::Arc::new(files), std::sync::Arc::new(skipped));
        *ix = Some(Index {
            at,
            files: files.clone(),
            skipped: skipped.clone(),
        });
        Ok((files, skipped))
    }

    /// Forgets the index, so that the next [`index`](Self::index) walks the folder: for
    /// callers that have just written into it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn invalidate(&self) {
        *self.index.lock().await = None;
    }

    /// The folder's real path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that `name` is a regular file inside the folder, with every symlink
    /// resolved, and returns it.
    ///
    /// # Errors
    ///
    /// [`SharedError::BadName`] for a name that is never served, [`SharedError::NotFound`]
    /// for anything else that is not a regular file inside the folder, and
    /// [`SharedError::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn resolve(&self, name: &str) -> Result<SharedFile, SharedError> {
        check_name(name)?;
        let root = self.root.clone();
        let name = name.to_owned();
        blocking(self.timeout, move || {
            let joined = root.join(&name);
            let real =
                std::fs::canonicalize(&joined).map_err(|_| SharedError::NotFound(name.clone()))?;
            if !real.starts_with(&root) || real == root {
                return Err(SharedError::NotFound(name));
            }
            let meta = std::fs::metadata(&real).map_err(|_| SharedError::NotFound(name.clone()))?;
            if !meta.is_file() {
                return Err(SharedError::NotFound(name));
            }
            Ok(SharedFile {
                name,
                path: real,
                size: meta.len(),
                modified: meta.modified().ok(),
            })
        })
        .await
    }

    #[cfg(test)]
    /// Every file the folder shares: regular files (also through links that stay
    /// inside), in sub-folders too, with names [`check_name`] accepts, sorted, at most
    /// [`MAX_FILES`].
    ///
    /// # Errors
    ///
    /// The folder cannot be read, or the walk timed out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn list(&self) -> Result<Vec<SharedFile>, SharedError> {
        Ok(self.walk().await?.0)
    }

    /// As [`list`](Self::list), with the files whose names the protocol cannot carry.
    async fn walk(&self) -> Result<(Vec<SharedFile>, Skipped), SharedError> {
        let root = self.root.clone();
        blocking(self.timeout, move || {
            let mut out = Vec::new();
            let mut skipped = Skipped::default();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, prefix)) = stack.pop() {
                let entries = std::fs::read_dir(&dir).map_err(|source| SharedError::Io {
                    path: dir.clone(),
                    source,
                })?;
                for entry in entries.flatten() {
                    let os_name = entry.file_name();
                    let lossy = os_name.to_string_lossy();
                    // Hidden entries and downloads in progress are left out on purpose.
                    if lossy.starts_with('.') || lossy.ends_with(PART_SUFFIX) {
                        continue;
                    }
                    let folder = || {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            "/"
                        } else {
                            ""
                        }
                    };
                    let Some(file_name) = os_name.to_str() else {
                        skipped.add(format!("{prefix}{lossy}{}", folder()), "not utf-8");
                        continue;
                    };
                    let name = format!("{prefix}{file_name}");
                    if let Err(e) = check_name(&name) {
                        if let SharedError::BadName { why, .. } = e {
                            skipped.add(format!("{name}{}", folder()), why);
                        }
                        continue;
                    }
                    let Ok(real) = std::fs::canonicalize(entry.path()) else {
                        continue;
                    };
                    if !real.starts_with(&root) {
                        continue;
                    }
                    let Ok(meta) = std::fs::metadata(&real) else {
                        continue;
                    };
                    if meta.is_dir() {
                        // Only real sub-folders, not links to folders (no cycles).
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push((entry.path(), format!("{name}/")));
                        }
                    } else if meta.is_file() {
                        out.push(SharedFile {
                            name,
                            path: real,
                            size: meta.len(),
                            modified: meta.modified().ok(),
                        });
                        if out.len() >= MAX_FILES {
                            stack.clear();
                            break;
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok((out, skipped))
        })
        .await
    }
}

/// The SHA-256 of the file at `path`, read in 64 KiB pieces (never whole), and its
/// length.
///
/// # Errors
///
/// The file cannot be read.
///
/// # Cancel safety
///
/// Cancel safe: nothing is written.
pub async fn sha256_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::filer::msg::hex;
    use crate::filer::testing::within;

    #[test]
    fn names_that_are_never_served() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            ".hidden",
            "dir/.git",
            "a b",
            "a\tb",
            "a\\b",
            "x.p2pipe-part",
            "a/",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(check_name(&long).is_err());
        for good in ["a.txt", "music/song.ogg", "x..y", "ünïcode"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f, 0xff]), "00ab7fff");
        assert_eq!(hex(&[]), "");
    }

    #[tokio::test]
    async fn resolve_refuses_links_leading_outside_and_serves_inside() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"do not serve").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), b"bee").unwrap();
        std::fs::write(dir.path().join("x.p2pipe-part"), b"partial").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, dir.path().join("leak")).unwrap();
            std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("alias")).unwrap();
        }
        let shared = within(SharedDir::open(dir.path(), DEFAULT_FS_TIMEOUT))
            .await
            .unwrap();
        let a = within(shared.resolve("a.txt")).await.unwrap();
        assert_eq!(a.size, 5);
        assert_eq!(within(shared.resolve("sub/b.txt")).await.unwrap().size, 3);
        for refused in ["leak", "out/secret", "sub", "missing", "../secret"] {
            assert!(
                within(shared.resolve(refused)).await.is_err(),
                "{refused} served"
            );
        }
        let abs = secret.to_string_lossy().into_owned();
        assert!(within(shared.resolve(&abs)).await.is_err());
        let names: Vec<String> = within(shared.list())
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        #[cfg(unix)]
        assert_eq!(names, ["a.txt", "alias", "sub/b.txt"]);
        let (h, n) = within(sha256_file(&a.path)).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            hex(&h),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[tokio::test]
    async fn a_walk_lists_the_names_the_protocol_cannot_carry_but_not_hidden_or_part_files() {
        let t = Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.txt",
            "my notes.txt",
            "tab\there",
            ".hidden x",
            "y z.p2pipe-part",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("my music")).unwrap();
        std::fs::write(dir.path().join("my music/song.ogg"), b"la").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b c"), b"x").unwrap();
        let shared = within(SharedDir::open(dir.path(), t)).await.unwrap();
        let files = tokio::time::timeout(t, shared.index())
            .await
            .unwrap()
            .unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt"]);
        let skipped = tokio::time::timeout(t, shared.skipped())
            .await
            .unwrap()
            .unwrap();
        let mut got: Vec<(&str, &str)> = skipped
            .names
            .iter()
            .map(|(n, w)| (n.as_str(), *w))
            .collect();
        got.sort();
        let why = "whitespace or control characters";
        assert_eq!(
            got,
            [
                ("my music/", why),
                ("my notes.txt", why),
                ("sub/b c", why),
                ("tab\there", why)
            ]
        );
        assert_eq!(skipped.count, 4);
    }

    #[tokio::test]
    async fn the_index_is_shared_while_fresh_and_walked_again_after() {
        let t = Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"a").unwrap();
        let shared = within(SharedDir::open(dir.path(), t))
            .await
            .unwrap()
            .index_max_age(Duration::from_secs(3600));
        // Eight callers at once share one walk.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let s = shared.clone();
                tokio::spawn(async move { s.index().await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for c in calls {
            got.push(tokio::time::timeout(t, c).await.unwrap().unwrap());
        }
        assert!(got.iter().all(|g| std::sync::Arc::ptr_eq(g, &got[0])));
        assert_eq!(got[0].len(), 1);
        // A new file is not seen while the index is fresh...
        std::fs::write(dir.path().join("b.txt"), b"b").unwrap();
        let again = tokio::time::timeout(t, shared.index())
            .await
            .unwrap()
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&again, &got[0]));
        // ...and is once it is invalidated (as after a download into the folder).
        within(shared.invalidate()).await;
        let fresh = tokio::time::timeout(t, shared.index())
            .await
            .unwrap()
            .unwrap();
        let names: Vec<&str> = fresh.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        // With no age, every call walks.
        let eager = shared.clone().index_max_age(Duration::ZERO);
        std::fs::remove_file(dir.path().join("a.txt")).unwrap();
        let now = tokio::time::timeout(t, eager.index())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.len(), 1);
        assert!(!std::sync::Arc::ptr_eq(&now, &fresh));
    }
}
