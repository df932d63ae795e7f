//! The STUN server list of the CLI: from `--stun` flags, else the `P2PIPE_STUN`
//! environment variable, else a config file, else the built-in list.

use std::path::PathBuf;

/// The built-in list. The first ones are said by public server lists to support RFC 5780
/// (OTHER-ADDRESS and CHANGE-REQUEST), which the NAT tests need; the others give the
/// external address only. Servers are asked all at once, and the first RFC 5780 answer
/// is used.
pub const DEFAULT_STUN_SERVERS: &[&str] = &[
    "stun.stunprotocol.org:3478",
    "stun.voipgate.com:3478",
    "stun.sipnet.com:3478",
    "stun.antisip.com:3478",
    "stun.l.google.com:19302",
    "stun.cloudflare.com:3478",
];

/// The environment variable that replaces the built-in list: servers separated by
/// commas or whitespace.
pub const ENV_VAR: &str = "P2PIPE_STUN";

/// The environment variable naming the config file; by default
/// `$XDG_CONFIG_HOME/p2pipe/stun-servers` (or `~/.config/p2pipe/stun-servers`).
pub const FILE_VAR: &str = "P2PIPE_STUN_FILE";

/// Where the list came from, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--stun` flags.
    Flags,
    /// The environment variable.
    Env,
    /// A config file.
    File(PathBuf),
    /// The built-in list.
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flags => write!(f, "--stun"),
            Source::Env => write!(f, "${ENV_VAR}"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => write!(f, "built-in list"),
        }
    }
}

fn config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(FILE_VAR) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("p2pipe").join("stun-servers"))
}

fn split(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The servers to ask, and where the list came from.
///
/// # Errors
///
/// A config file named by [`FILE_VAR`] that cannot be read (a missing default file is
/// not an error).
pub fn servers(flags: &[String]) -> Result<(Vec<String>, Source), String> {
    if !flags.is_empty() {
        return Ok((flags.to_vec(), Source::Flags));
    }
    if let Ok(v) = std::env::var(ENV_VAR) {
        let list = split(&v);
        if !list.is_empty() {
            return Ok((list, Source::Env));
        }
    }
    if let Some(path) = config_file() {
        let explicit = std::env::var_os(FILE_VAR).is_some();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let list = split(&text);
                if !list.is_empty() {
                    return Ok((list, Source::File(path)));
                }
            }
            Err(e) if explicit => {
                return Err(format!("cannot read {}: {e}", path.display()).to_lowercase())
            }
            Err(_) => {}
        }
    }
    Ok((
        DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect(),
        Source::BuiltIn,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_whitespace_and_comments() {
        let text = "a:1, b:2\n# a comment\n  c:3 # trailing\n\n[::1]:4";
        assert_eq!(split(text), ["a:1", "b:2", "c:3", "[::1]:4"]);
    }
}
