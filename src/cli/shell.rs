//! `p2pipe shell`: an interactive shell over one node, with history and completion.
//!
//! It offers what the btfiler window offered: the peer list, the file list, search,
//! fetch, adding and removing peers, rebuilding the table, and quit. Operations that
//! change the node (fetch into its folder, add-peer, remove-peer, rebuild) are trusted
//! and need the node's secret (`--secret-file`); the secret itself is never sent.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pipe::filer::client::FilerClient;
use p2pipe::filer::{Frame, Kind, PeerId, TrustedOp};
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

/// Arguments of `p2pipe shell`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node to work with.
    node: String,
    /// A file holding the node's secret, for the trusted commands.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

const COMMANDS: &[(&str, &str)] = &[
    ("peers", "list the node's peers"),
    (
        "files",
        "list the files the node knows (its own, and those it learned of)",
    ),
    ("search", "search KEY: ask the network who has a file"),
    (
        "fetch",
        "fetch NAME: the node finds NAME and downloads it into its folder (trusted)",
    ),
    (
        "add-peer",
        "add-peer PID HOST PORT: add a peer to the node's table (trusted)",
    ),
    (
        "remove-peer",
        "remove-peer PID: drop a peer from the node's table (trusted)",
    ),
    (
        "rebuild",
        "rebuild HOST PORT [HOPS]: rebuild the table from a contact (trusted)",
    ),
    ("help", "this list"),
    ("quit", "leave the shell"),
];

/// Completes command names, and file names after `fetch`.
struct ShellHelper {
    names: Arc<Mutex<Vec<String>>>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        let (start, words) = completions(line, pos, &names);
        let pairs = words
            .into_iter()
            .map(|c| Pair {
                display: c.clone(),
                replacement: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// What completes the word before `pos`: command names at the start of the line, and
/// the file names the shell has seen (from `files` and `search`) after `fetch`. Returns
/// where the replaced word starts, and the candidates.
fn completions(line: &str, pos: usize, names: &[String]) -> (usize, Vec<String>) {
    let line = &line[..pos];
    let start = line.rfind(' ').map_or(0, |i| i + 1);
    let word = &line[start..];
    let matching = |items: &mut dyn Iterator<Item = &str>| {
        items
            .filter(|c| c.starts_with(word))
            .map(str::to_owned)
            .collect()
    };
    if start == 0 {
        return (0, matching(&mut COMMANDS.iter().map(|(c, _)| *c)));
    }
    if line.starts_with("fetch ") {
        return (start, matching(&mut names.iter().map(String::as_str)));
    }
    (pos, Vec::new())
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("p2pipe").join("shell-history"))
}

fn text(f: &Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

/// Runs the shell until `quit` or end of input.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let secret = match &args.secret_file {
        Some(f) => Some(super::share::read_secret(f)?),
        None => None,
    };
    let target = p2pipe::Target::parse(&args.node, None)?;
    let client = FilerClient::new(target).timeout(Duration::from_secs(30));
    let id = client.name().await?;
    println!("connected to {id}; 'help' lists the commands");
    let names = Arc::new(Mutex::new(Vec::new()));
    let mut ed: Editor<ShellHelper, rustyline::history::FileHistory> = Editor::new()?;
    ed.set_helper(Some(ShellHelper {
        names: names.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    let prompt = format!("p2pipe {id}> ");
    loop {
        let p = prompt.clone();
        let (back, line) = tokio::task::spawn_blocking(move || {
            let r = ed.readline(&p);
            (ed, r)
        })
        .await?;
        ed = back;
        let line = match line {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, rest)) = words.split_first() else {
            continue;
        };
        let _ = ed.add_history_entry(line.as_str());
        if cmd == "quit" || cmd == "exit" {
            break;
        }
        if let Err(e) = command(&client, &args.node, secret.as_deref(), &names, cmd, rest).await {
            println!("error: {e}");
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ed.save_history(h);
    }
    Ok(())
}

async fn command(
    client: &FilerClient,
    node: &str,
    secret: Option<&[u8]>,
    names: &Arc<Mutex<Vec<String>>>,
    cmd: &str,
    rest: &[&str],
) -> Result<(), Box<dyn std::error::Error>> {
    let trusted = |op: TrustedOp| async move {
        let secret = secret.ok_or("this command needs the node's secret (--secret-file)")?;
        let replies = client.trusted(secret, op).await?;
        for f in replies.iter().skip(1) {
            let kind = if f.kind == Kind::ERRO { "error: " } else { "" };
            println!("{kind}{}", text(f));
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    match (cmd, rest) {
        ("help", _) => {
            for (c, what) in COMMANDS {
                println!("  {c:<12} {what}");
            }
        }
        ("peers", []) => {
            let peers = client.list().await?;
            println!("{} peers", peers.len());
            for p in peers {
                println!("  {} ({}:{})", p.pid, p.host, p.port);
            }
        }
        ("files", []) => {
            let files = client.files().await?;
            println!("{} files", files.len());
            let mut known = Vec::new();
            for (name, owner, size) in files {
                match size {
                    Some(n) => println!("  {name}  {n} bytes  at {owner}"),
                    None => println!("  {name}  at {owner}"),
                }
                known.push(name);
            }
            if let Ok(mut n) = names.lock() {
                *n = known;
            }
        }
        ("search", [key]) => {
            let hits = super::search::search_via(node, key, 8, Duration::from_secs(3), 0).await?;
            if hits.is_empty() {
                println!("no answer for {key}");
            }
            for (name, owner) in &hits {
                println!("  {name}  at {owner}");
            }
            if let Ok(mut n) = names.lock() {
                n.extend(hits.into_iter().map(|(name, _)| name));
            }
        }
        ("fetch", [name]) => {
            trusted(TrustedOp::Find {
                key: (*name).to_owned(),
            })
            .await?
        }
        ("add-peer", [pid, host, port]) => {
            trusted(TrustedOp::AddPeer {
                pid: PeerId::parse(pid)?,
                host: (*host).to_owned(),
                port: port.parse()?,
            })
            .await?
        }
        ("remove-peer", [pid]) => {
            trusted(TrustedOp::DelPeer {
                pid: PeerId::parse(pid)?,
            })
            .await?
        }
        ("rebuild", [host, port]) | ("rebuild", [host, port, _]) => {
            let hops = rest.get(2).map_or(Ok(2), |h| h.parse())?;
            trusted(TrustedOp::Rebuild {
                host: (*host).to_owned(),
                port: port.parse()?,
                hops,
            })
            .await?
        }
        (c, _) if COMMANDS.iter().any(|(k, _)| *k == c) => {
            return Err(format!("wrong arguments for {c}; 'help' shows them").into())
        }
        (c, _) => return Err(format!("unknown command {c}; 'help' lists them").into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::completions;

    #[test]
    fn commands_complete_at_the_start_and_names_after_fetch() {
        let names = vec!["notes.txt".to_string(), "new.mp3".into(), "old.txt".into()];
        assert_eq!(
            completions("f", 1, &names),
            (0, vec!["files".into(), "fetch".into()])
        );
        assert_eq!(
            completions("re", 2, &names),
            (0, vec!["remove-peer".into(), "rebuild".into()])
        );
        assert_eq!(completions("", 0, &names).1.len(), 9);
        assert_eq!(
            completions("fetch n", 7, &names),
            (6, vec!["notes.txt".into(), "new.mp3".into()])
        );
        assert_eq!(completions("fetch ", 6, &names), (6, names.clone()));
        // Only the word before the cursor counts.
        assert_eq!(
            completions("fetch no and more", 8, &names),
            (6, vec!["notes.txt".into()])
        );
        // Nothing to complete after other commands, or after a command's first word.
        assert_eq!(completions("search n", 8, &names), (8, vec![]));
        assert_eq!(
            completions("fetch notes.txt x", 17, &names).1,
            Vec::<String>::new()
        );
    }
}
