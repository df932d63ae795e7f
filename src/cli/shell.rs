//! `p2pipe shell`: an interactive shell over one node, with history and completion.
//!
//! It offers what the btfiler window offered: the peer list, the file list, search,
//! fetch, adding and removing peers, rebuilding the table, and quit (or exit). Operations
//! that change the node (fetch into its folder, add-peer, remove-peer, rebuild) are
//! trusted and need the node's secret (`--secret-file`); the secret itself is never sent.
//!
//! Results go to stdout and errors to stderr. The node's reply texts are shown without
//! their protocol tags (`Join: `, `Find: `...), which stay on the wire for btfiler. Tab
//! lists the candidates when several match. Ctrl-C while a command runs (a search that
//! waits, a fetch) cancels that command and returns to the prompt; a trusted one may
//! already have started on the node. Ctrl-C at the prompt gives a new prompt. The
//! history is saved whenever the shell ends: `quit`, `exit`, end of input, or an error.
//!
//! When stdin is not a terminal (a script piped in), the shell exits with a non-zero
//! status if any command failed; at a terminal it exits with 0.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pipe::filer::{Error as FilerError, FilerClient, Frame, Kind, PeerId, TrustedOp};
use rustyline::completion::{Completer, Pair};
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

/// Arguments of `p2pipe shell`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Ctrl-C cancels the running command. With stdin not a terminal \
    (commands piped in), the exit status is non-zero if any command failed."
)]
pub struct Args {
    /// The node to work with.
    node: String,
    /// A file holding the node's secret, for the trusted commands.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// The longest `search` waits for answers, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    wait: f64,
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
    ("exit", "leave the shell (as quit)"),
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
    String::from_utf8_lossy(f.payload()).into_owned()
}

/// A node's reply text without its protocol tag (`Join: `, `Find: `, `Quit: `,
/// `Rebuild: `, `Share: `...): one capitalised word and a colon, which the wire keeps
/// for btfiler and the shell does not show.
fn untagged(text: &str) -> &str {
    match text.split_once(": ") {
        Some((tag, rest))
            if tag.starts_with(|c: char| c.is_ascii_uppercase())
                && tag.chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            rest
        }
        _ => text,
    }
}

/// `1 peer`, `2 peers`, `0 peers`.
/// Some commands failed in a shell whose input was not a terminal (each was reported
/// as it failed).
#[derive(Debug)]
struct CommandsFailed(usize);

impl std::fmt::Display for CommandsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        write!(f, "{} failed", crate::cli::count(n as u64, "command"))
    }
}

impl std::error::Error for CommandsFailed {}

/// Installs the process's Ctrl-C handler now, before the first command; tokio keeps it
/// installed from then on. A Ctrl-C that comes while no command listens for it (the
/// shell reading its input from a pipe) is then ignored instead of ending the process.
fn catch_ctrl_c() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::interrupt()).map(drop)
    }
    #[cfg(windows)]
    {
        tokio::signal::windows::ctrl_c().map(drop)
    }
    #[cfg(not(any(unix, windows)))]
    {
        Ok(())
    }
}

/// Runs the shell until `quit`, `exit` or end of input, and saves the history.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wait = Duration::try_from_secs_f64(args.wait).map_err(|_| {
        format!(
            "invalid --wait {}: a number of seconds is needed",
            args.wait
        )
    })?;
    let secret = match &args.secret_file {
        Some(f) => Some(super::share::read_secret(f)?),
        None => None,
    };
    let target = p2pipe::Target::parse(&args.node, None)?;
    let client = FilerClient::new(target).timeout(Duration::from_secs(30));
    let id = client.name().await?;
    // Until here Ctrl-C ends the process (a node that does not answer); from here on
    // it cancels the running command.
    catch_ctrl_c()?;
    println!("connected to {id}; 'help' lists the commands");
    let interactive = std::io::stdin().is_terminal();
    let names = Arc::new(Mutex::new(Vec::new()));
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .build();
    let mut ed: Editor<ShellHelper, rustyline::history::FileHistory> = Editor::with_config(config)?;
    ed.set_helper(Some(ShellHelper {
        names: names.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    let prompt = format!("p2pipe {id}> ");
    let mut failed = 0;
    let end: Result<(), Box<dyn std::error::Error>> = loop {
        let p = prompt.clone();
        let read = tokio::task::spawn_blocking(move || {
            let r = ed.readline(&p);
            (ed, r)
        })
        .await;
        // Only a panic in the line editor loses it, and the history with it.
        let line;
        (ed, line) = read.map_err(|e| format!("the line editor failed: {e}"))?;
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, rest)) = words.split_first() else {
            continue;
        };
        let _ = ed.add_history_entry(line.as_str());
        if cmd == "quit" || cmd == "exit" {
            break Ok(());
        }
        // A fresh listener per command: a Ctrl-C that came at the prompt is not kept
        // for the next command.
        let run = command(
            &client,
            &args.node,
            secret.as_deref(),
            &names,
            wait,
            cmd,
            rest,
        );
        let done = tokio::select! {
            r = run => Some(r),
            Ok(()) = tokio::signal::ctrl_c() => None,
        };
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                eprintln!("error: {e}");
                failed += 1;
            }
            None => println!("cancelled"),
        }
    };
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ed.save_history(h);
    }
    end?;
    if failed > 0 && !interactive {
        return Err(Box::new(CommandsFailed(failed)));
    }
    Ok(())
}

/// Runs one command.
///
/// # Cancel safety
///
/// Cancel safe, but a trusted operation may already have started on the node.
async fn command(
    client: &FilerClient,
    node: &str,
    secret: Option<&[u8]>,
    names: &Arc<Mutex<Vec<String>>>,
    wait: Duration,
    cmd: &str,
    rest: &[&str],
) -> Result<(), Box<dyn std::error::Error>> {
    // The node's answer is printed; an `ERRO` answer is the command's error.
    let trusted = |op: TrustedOp| async move {
        let secret = secret.ok_or("this command needs the node's secret (--secret-file)")?;
        let replies = match client.trusted(secret, op).await {
            Ok(r) => r,
            Err(FilerError::Refused(t)) => {
                return Err(format!("the node refused: {}", untagged(&t)).into())
            }
            Err(e) => return Err(e.into()),
        };
        if replies.len() < 2 {
            return Err("the node closed without an answer".into());
        }
        let mut refused = Vec::new();
        for f in &replies[1..] {
            let t = text(f);
            if f.kind == Kind::ERRO {
                refused.push(untagged(&t).to_owned());
            } else {
                println!("{}", untagged(&t));
            }
        }
        if refused.is_empty() {
            Ok::<(), Box<dyn std::error::Error>>(())
        } else {
            Err(refused.join("; ").into())
        }
    };
    match (cmd, rest) {
        ("help", _) => {
            for (c, what) in COMMANDS {
                println!("  {c:<12} {what}");
            }
        }
        ("peers", []) => {
            let peers = client.list().await?;
            println!("{}", crate::cli::count(peers.len() as u64, "peer"));
            for p in peers {
                println!("  {} ({}:{})", p.pid, p.host, p.port);
            }
        }
        ("files", []) => {
            let files = client.files().await?;
            println!("{}", crate::cli::count(files.len() as u64, "file"));
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
            let quiet = super::search::DEFAULT_QUIET;
            let hits = super::search::search_via(node, key, 8, wait, quiet, 0).await?;
            if hits.is_empty() {
                return Err(Box::new(super::search::NoAnswer {
                    key: (*key).to_owned(),
                    wait,
                }));
            }
            for (name, owner) in &hits {
                println!("  {name}  at {owner}");
            }
            if let Ok(mut n) = names.lock() {
                for (name, _) in hits {
                    if !n.contains(&name) {
                        n.push(name);
                    }
                }
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
    use super::{completions, untagged};

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
        assert_eq!(completions("", 0, &names).1.len(), 10);
        assert_eq!(completions("e", 1, &names), (0, vec!["exit".into()]));
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

    #[test]
    fn reply_texts_lose_their_protocol_tag_and_counts_their_plural() {
        assert_eq!(
            untagged("Join: peer added: 127.0.0.1:9"),
            "peer added: 127.0.0.1:9"
        );
        assert_eq!(
            untagged("Find: fetched a.txt 3 bytes from h:1"),
            "fetched a.txt 3 bytes from h:1"
        );
        assert_eq!(untagged("Rebuild: 2 peers"), "2 peers");
        assert_eq!(untagged("Share: a.txt 5 2cf2"), "a.txt 5 2cf2");
        assert_eq!(untagged("Quit: peer removed: h:9"), "peer removed: h:9");
        // Not a tag: lower case, several words, or no colon.
        assert_eq!(untagged("peer added: x"), "peer added: x");
        assert_eq!(untagged("No peer: x"), "No peer: x");
        assert_eq!(untagged("2 peers"), "2 peers");
        assert_eq!(crate::cli::count(0, "peer"), "0 peers");
        assert_eq!(crate::cli::count(1, "peer"), "1 peer");
        assert_eq!(crate::cli::count(2, "file"), "2 files");
    }
}
