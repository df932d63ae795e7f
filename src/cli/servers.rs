//! The server lists of the CLI (STUN servers, signalling brokers), each from its flags,
//! else its environment variable, else its config file, else its built-in list; and the
//! CLI's config folder.

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

/// The built-in signalling brokers: public MQTT brokers on plain TCP.
pub const DEFAULT_SIGNAL_BROKERS: &[&str] = &[
    "mqtt://test.mosquitto.org:1883",
    "mqtt://broker.hivemq.com:1883",
];

/// Where one list comes from: the names of its flag, environment variables and config
/// file, and its built-in entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListSpec {
    /// The command-line flag, as the report names it (`--stun`).
    pub flag: &'static str,
    /// The environment variable that replaces the built-in list: entries separated by
    /// commas or whitespace.
    pub env: &'static str,
    /// The environment variable naming the config file.
    pub file_var: &'static str,
    /// The config file's name in the config folder ([`config_dir`]).
    pub file_name: &'static str,
    /// The built-in list.
    pub built_in: &'static [&'static str],
}

/// The STUN servers: `--stun`, `P2PIPE_STUN`, `P2PIPE_STUN_FILE` or
/// `<config>/stun-servers`, the built-in list.
pub const STUN: ListSpec = ListSpec {
    flag: "--stun",
    env: "P2PIPE_STUN",
    file_var: "P2PIPE_STUN_FILE",
    file_name: "stun-servers",
    built_in: DEFAULT_STUN_SERVERS,
};

/// The signalling brokers: `--signal`, `P2PIPE_SIGNAL`, `P2PIPE_SIGNAL_FILE` or
/// `<config>/signal-brokers`, the built-in list.
pub const SIGNAL: ListSpec = ListSpec {
    flag: "--signal",
    env: "P2PIPE_SIGNAL",
    file_var: "P2PIPE_SIGNAL_FILE",
    file_name: "signal-brokers",
    built_in: DEFAULT_SIGNAL_BROKERS,
};

/// Where a list came from, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Flags (the flag's name).
    Flags(&'static str),
    /// The environment variable (its name).
    Env(&'static str),
    /// A config file.
    File(PathBuf),
    /// The built-in list.
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flags(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "${var}"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => write!(f, "built-in list"),
        }
    }
}

/// The CLI's config folder: `$XDG_CONFIG_HOME/p2pipe`, else `~/.config/p2pipe`.
pub fn config_dir() -> Option<PathBuf> {
    // As the XDG base directory spec says: an unset, empty or relative XDG_CONFIG_HOME is
    // ignored, so that a key file never lands in whatever folder the command ran in.
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".config"))
        })?;
    Some(base.join("p2pipe"))
}

fn split(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ListSpec {
    fn config_file(&self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.file_var) {
            return Some(PathBuf::from(p));
        }
        Some(config_dir()?.join(self.file_name))
    }

    /// The list to use, and where it came from.
    ///
    /// # Errors
    ///
    /// A config file named by the `file_var` variable that cannot be read (a missing
    /// default file is not an error).
    pub fn resolve(&self, flags: &[String]) -> Result<(Vec<String>, Source), String> {
        if !flags.is_empty() {
            return Ok((flags.to_vec(), Source::Flags(self.flag)));
        }
        if let Ok(v) = std::env::var(self.env) {
            let list = split(&v);
            if !list.is_empty() {
                return Ok((list, Source::Env(self.env)));
            }
        }
        if let Some(path) = self.config_file() {
            let explicit = std::env::var_os(self.file_var).is_some();
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
            self.built_in.iter().map(|s| s.to_string()).collect(),
            Source::BuiltIn,
        ))
    }
}

/// The STUN servers to ask, and where the list came from ([`STUN`]).
///
/// # Errors
///
/// As [`ListSpec::resolve`].
pub fn servers(flags: &[String]) -> Result<(Vec<String>, Source), String> {
    STUN.resolve(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_whitespace_and_comments() {
        let text = "a:1, b:2\n# a comment\n  c:3 # trailing\n\n[::1]:4";
        assert_eq!(split(text), ["a:1", "b:2", "c:3", "[::1]:4"]);
    }

    #[test]
    fn flags_win_and_are_named_in_the_source() {
        let flags = vec!["mqtt://127.0.0.1:1883".to_owned()];
        let (list, source) = SIGNAL.resolve(&flags).unwrap();
        assert_eq!((list, source.to_string()), (flags, "--signal".to_owned()));
    }
}
