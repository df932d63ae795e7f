//! The node key pair and its key file.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

use super::{hex, unhex, Error, NodeId, PublicKey, Signature};

/// The key file's first line.
const HEADER: &str = "p2pipe node key v1";

/// A key file is a header line and 64 hex digits; anything much longer is not one.
const MAX_KEY_FILE: u64 = 256;

/// Whether [`Identity::load_or_create`] made a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The key file did not exist: a new key was written to it.
    New,
    /// The key file existed and was loaded.
    Existing,
}

/// A node's ed25519 key pair: what signs its messages and address records, and what its
/// [`NodeId`] is derived from.
///
/// `Debug` shows the node id only; the secret never appears in output, logs or errors.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    id: NodeId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.key.verifying_key() == other.key.verifying_key()
    }
}
impl Eq for Identity {}

impl Identity {
    /// A new key from the system's random source.
    ///
    /// # Panics
    ///
    /// When the system has no random source to read.
    pub fn generate() -> Identity {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the system random source");
        let id = Identity::from_seed(seed);
        seed.fill(0);
        id
    }

    /// The key of a 32-byte ed25519 seed (for tests and fixed keys).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(&seed);
        let id = NodeId::from_key(&key.verifying_key());
        Identity { key, id }
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.key.verifying_key()
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The signing key, for the layers above that seal with it (never to be shown).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `msg` with the node key.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// The node key's X25519 secret, for Diffie-Hellman with it (see [`x25519_secret`]).
    pub(crate) fn x25519_secret(&self) -> StaticSecret {
        x25519_secret(&self.key)
    }

    /// Loads the key file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be read, [`Error::KeyFileOpen`] when other users can
    /// read or change it (on Unix), [`Error::NotAKeyFile`] when it is not a key file.
    pub fn load(path: &Path) -> Result<Identity, Error> {
        let io = |what, e| Error::Io {
            what,
            path: path.to_owned(),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(|e| io("read", e))?;
        let meta = file.metadata().map_err(|e| io("read", e))?;
        check_private(path, &meta)?;
        let mut text = String::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| io("read", e))?;
        let seed = parse_key_file(&text).map_err(|why| Error::NotAKeyFile {
            path: path.to_owned(),
            why,
        })?;
        Ok(Identity::from_seed(seed))
    }

    /// Loads the key file at `path`, or, when there is none, creates its folder (mode
    /// 0700) and writes a new key to it (mode 0600).
    ///
    /// # Errors
    ///
    /// As [`Identity::load`], and [`Error::Io`] when the folder or file cannot be
    /// created.
    pub fn load_or_create(path: &Path) -> Result<(Identity, Created), Error> {
        match Identity::load(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.map(|id| (id, Created::Existing)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir)?;
        }
        let id = Identity::generate();
        match id.save_new(path) {
            Ok(()) => Ok((id, Created::New)),
            // Another process made it first: use its key.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Identity::load(path).map(|id| (id, Created::Existing))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the key to a new file at `path`, readable by its owner only.
    ///
    /// The key is written to a temporary file beside it, created exclusively with mode
    /// 0600, then linked into place, which fails if `path` exists (a symlink included):
    /// the key is never readable by others, and never half-written at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `path` exists (kind `AlreadyExists`), or the folder is not
    /// writable.
    pub fn save_new(&self, path: &Path) -> Result<(), Error> {
        let io = |what, p: &Path, e| Error::Io {
            what,
            path: p.to_owned(),
            source: e,
        };
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the system random source");
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", hex(&nonce)));
        let tmp = PathBuf::from(tmp);
        let written = create_private(&tmp)
            .and_then(|mut f| {
                let text = format!("{HEADER}\n{}\n", hex(self.key.as_bytes()));
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| io("create", &tmp, e))
            .and_then(|()| std::fs::hard_link(&tmp, path).map_err(|e| io("create", path, e)));
        let _ = std::fs::remove_file(&tmp);
        written
    }
}

/// The X25519 secret of an ed25519 key: its clamped scalar. With [`x25519_public`] of
/// the same key it makes an X25519 key pair, so one node key both signs and agrees
/// secrets (sealed messages, the p2p layer's Noise handshake).
pub(crate) fn x25519_secret(key: &SigningKey) -> StaticSecret {
    StaticSecret::from(key.to_scalar_bytes())
}

/// The X25519 public key of an ed25519 public key: its Montgomery form. It drops the
/// Edwards sign, so `key` and its negation share it; the secret of either is the
/// other's negated, so proving one proves nothing about a third party's key.
pub(crate) fn x25519_public(key: &PublicKey) -> X25519Public {
    X25519Public::from(key.to_montgomery().to_bytes())
}

/// The seed in a key file's text, or what is wrong with it.
fn parse_key_file(text: &str) -> Result<[u8; 32], &'static str> {
    if text.len() as u64 > MAX_KEY_FILE {
        return Err("too long");
    }
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err("the first line is not \"p2pipe node key v1\"");
    }
    let seed = lines
        .next()
        .and_then(|l| unhex::<32>(l.trim()))
        .ok_or("the second line is not 64 hex digits")?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("text after the key");
    }
    Ok(seed)
}

/// A new file, created exclusively (never through an existing name or symlink), with
/// mode 0600 from the start on Unix.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

/// Creates `dir` and its parents, the new ones with mode 0700 on Unix.
fn create_dir(dir: &Path) -> Result<(), Error> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| Error::Io {
        what: "create",
        path: dir.to_owned(),
        source: e,
    })
}

/// Refuses a key file that other users can read or change.
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let what = if mode & 0o044 != 0 {
        "readable"
    } else if mode & 0o022 != 0 {
        "writable"
    } else {
        return Ok(());
    };
    Err(Error::KeyFileOpen {
        path: path.to_owned(),
        what,
        mode,
    })
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_node_id_and_never_the_secret() {
        let id = Identity::from_seed([0xab; 32]);
        let shown = format!("{id:?} {id:#?}");
        assert!(shown.contains(&id.node_id().to_string()), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn signatures_verify_under_the_public_key() {
        let id = Identity::from_seed([1; 32]);
        let sig = id.sign(b"hello");
        id.public().verify_strict(b"hello", &sig).unwrap();
        assert!(id.public().verify_strict(b"hellO", &sig).is_err());
        assert_eq!(NodeId::from_key(&id.public()), id.node_id());
    }

    #[test]
    fn the_x25519_pair_of_a_node_key_agrees_with_its_public_montgomery_form() {
        let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        assert_eq!(
            X25519Public::from(&a.x25519_secret()),
            x25519_public(&a.public())
        );
        let ab = a
            .x25519_secret()
            .diffie_hellman(&x25519_public(&b.public()));
        let ba = b
            .x25519_secret()
            .diffie_hellman(&x25519_public(&a.public()));
        assert_eq!(ab.as_bytes(), ba.as_bytes());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Identity::generate(), Identity::generate());
    }

    #[test]
    fn a_key_file_round_trips_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep").join("node.key");
        let (a, created) = Identity::load_or_create(&path).unwrap();
        assert_eq!(created, Created::New);
        let (b, created) = Identity::load_or_create(&path).unwrap();
        assert_eq!((b, created), (a.clone(), Created::Existing));
        let e = a.save_new(&path).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        for (text, why) in [
            ("", "the first line is not \"p2pipe node key v1\""),
            (
                "p2pipe node key v1\nabcd\n",
                "the second line is not 64 hex digits",
            ),
            (
                "ssh-ed25519 AAAA",
                "the first line is not \"p2pipe node key v1\"",
            ),
        ] {
            let p = dir.path().join("other");
            let _ = std::fs::remove_file(&p);
            create_private(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let e = Identity::load(&p).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{} is not a p2pipe node key: {why}", p.display())
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::from_seed([2; 32]).save_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&path).unwrap_err();
        let p = path.display();
        assert_eq!(
            e.to_string(),
            format!("{p} is readable by other users (mode 0644); run chmod 600 {p}")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(Error::KeyFileOpen {
                what: "writable",
                ..
            })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_is_not_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("node.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // A dangling symlink: loading finds nothing, and creating does not follow it.
        assert!(Identity::load_or_create(&link).is_err());
        assert!(!target.exists());
    }
}
