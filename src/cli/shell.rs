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
//! The node is `HOST:PORT`, or a signed address (`p2pipe1:...`) reached across NATs
//! through a P2P node and a tunnel, as `p2pipe fetch --from` does; every command then
//! goes through the tunnel, and `search` asks the node to search on the shell's behalf
//! (`SRCH`). Trusted commands through a tunnel need the node started with
//! `--trust-remote`.
//!
//! When stdin is not a terminal (a script piped in), the shell exits with a non-zero
//! status if any command failed; at a terminal it exits with 0.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::search::Search;
use super::via::{is_signed, Via};
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
    /// The node to work with: HOST:PORT, or a signed address (`p2pipe1:...`) reached
    /// across NATs through a P2P node (the options below).
    #[arg(value_name = "HOST:PORT|p2pipe1:...")]
    node: String,
    /// A file holding the node's secret, for the trusted commands.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// The longest `search` waits for answers, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    wait: f64,
    #[command(flatten)]
    p2p: super::node::NodeArgs,
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

/// The line editor, with the shell's completion.
type LineEditor = Editor<ShellHelper, rustyline::history::FileHistory>;

/// A boxed error, as the commands return them.
type BoxError = Box<dyn std::error::Error>;

/// Runs the shell until `quit`, `exit` or end of input, and saves the history; a P2P
/// node started for a signed address is stopped however the session ends.
pub async fn run(args: Args) -> Result<(), BoxError> {
    let (shell, via) = Shell::connect(args).await?;
    let ended = session(&shell).await;
    if let Some(via) = via {
        via.stop().await;
    }
    ended
}

/// The session: Ctrl-C handling, the line editor with its history, and the commands.
async fn session(shell: &Shell) -> Result<(), BoxError> {
    // Until here Ctrl-C ends the process (a node that does not answer); from here on
    // it cancels the running command.
    catch_ctrl_c()?;
    println!("connected to {}; 'help' lists the commands", shell.id);
    let interactive = std::io::stdin().is_terminal();
    let mut ed = editor(&shell.names)?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    let (mut ed, end, failed) = shell.read_eval(ed).await?;
    if let Some(h) = &history {
        save_history(&mut ed, h);
    }
    end?;
    if failed > 0 && !interactive {
        return Err(Box::new(CommandsFailed(failed)));
    }
    Ok(())
}

/// A line editor that lists the candidates when several complete a word.
fn editor(names: &Arc<Mutex<Vec<String>>>) -> Result<LineEditor, BoxError> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .build();
    let mut ed: LineEditor = Editor::with_config(config)?;
    ed.set_helper(Some(ShellHelper {
        names: names.clone(),
    }));
    Ok(ed)
}

fn save_history(ed: &mut LineEditor, path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = ed.save_history(path);
}

/// Reads one line without blocking the runtime. Only a panic in the line editor loses
/// it (and the history with it): that is the error.
async fn read_line(
    mut ed: LineEditor,
    prompt: &str,
) -> Result<(LineEditor, rustyline::Result<String>), BoxError> {
    let prompt = prompt.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        let r = ed.readline(&prompt);
        (ed, r)
    })
    .await;
    read.map_err(|e| format!("the line editor failed: {e}").into())
}

/// One shell's connection to its node, and what its commands share.
struct Shell {
    client: FilerClient,
    /// The node as given on the command line.
    node: String,
    /// The node's id.
    id: PeerId,
    secret: Option<Vec<u8>>,
    /// The file names seen so far, for completion after `fetch`.
    names: Arc<Mutex<Vec<String>>>,
    /// The longest `search` waits.
    wait: Duration,
    /// Whether the node is reached through a tunnel: then it searches on the shell's
    /// behalf.
    tunnelled: bool,
}

impl Shell {
    /// Reads the secret and asks the node its name; for a signed address, also returns
    /// the P2P node and tunnel that reach it, for [`run`] to stop at the end.
    async fn connect(args: Args) -> Result<(Shell, Option<Via>), BoxError> {
        let wait = super::search::wait_secs(args.wait)?;
        let secret = match &args.secret_file {
            Some(f) => Some(super::share::read_secret(f)?),
            None => None,
        };
        let (target, via) = if is_signed(&args.node) {
            let via = Via::start(&args.node, &args.p2p).await?;
            (p2pipe::Target::from(via.entrance()), Some(via))
        } else {
            (p2pipe::Target::parse(&args.node, None)?, None)
        };
        let client = FilerClient::new(target).timeout(Duration::from_secs(30));
        let id = match client.name().await {
            Ok(id) => id,
            Err(e) => {
                if let Some(via) = via {
                    via.stop().await;
                }
                return Err(e.into());
            }
        };
        let shell = Shell {
            tunnelled: via.is_some(),
            client,
            node: args.node,
            id,
            secret,
            names: Arc::new(Mutex::new(Vec::new())),
            wait,
        };
        Ok((shell, via))
    }

    /// Reads and runs commands until `quit`, `exit`, end of input or a line-editor
    /// error. Returns the editor (for its history), how the loop ended, and how many
    /// commands failed.
    async fn read_eval(
        &self,
        mut ed: LineEditor,
    ) -> Result<(LineEditor, Result<(), BoxError>, usize), BoxError> {
        let prompt = format!("p2pipe {}> ", self.id);
        let mut failed = 0;
        loop {
            let line;
            (ed, line) = read_line(ed, &prompt).await?;
            let line = match line {
                Ok(l) => l,
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => return Ok((ed, Ok(()), failed)),
                Err(e) => return Ok((ed, Err(e.into()), failed)),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((&cmd, rest)) = words.split_first() else {
                continue;
            };
            let _ = ed.add_history_entry(line.as_str());
            if cmd == "quit" || cmd == "exit" {
                return Ok((ed, Ok(()), failed));
            }
            if !self.run_cancellable(cmd, rest).await {
                failed += 1;
            }
        }
    }

    /// Runs one command until it ends or Ctrl-C cancels it, and prints how it ended:
    /// false when it failed.
    async fn run_cancellable(&self, cmd: &str, rest: &[&str]) -> bool {
        // A fresh listener per command: a Ctrl-C that came at the prompt is not kept
        // for the next command.
        let done = tokio::select! {
            r = self.command(cmd, rest) => Some(r),
            Ok(()) = tokio::signal::ctrl_c() => None,
        };
        match done {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                eprintln!("error: {e}");
                false
            }
            None => {
                println!("cancelled");
                true
            }
        }
    }

    /// Runs one command.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, but a trusted operation may already have started on the node.
    async fn command(&self, cmd: &str, rest: &[&str]) -> Result<(), BoxError> {
        match (cmd, rest) {
            ("help", _) => help(),
            ("peers", []) => self.peers().await,
            ("files", []) => self.files().await,
            ("search", [key]) => self.search(key).await,
            ("fetch", [name]) => {
                let key = (*name).to_owned();
                self.trusted(TrustedOp::Find { key }).await
            }
            ("add-peer", [pid, host, port]) => {
                let (pid, host, port) = (PeerId::parse(pid)?, (*host).to_owned(), port.parse()?);
                self.trusted(TrustedOp::AddPeer { pid, host, port }).await
            }
            ("remove-peer", [pid]) => {
                let pid = PeerId::parse(pid)?;
                self.trusted(TrustedOp::DelPeer { pid }).await
            }
            ("rebuild", [host, port]) | ("rebuild", [host, port, _]) => {
                let hops = rest.get(2).map_or(Ok(2), |h| h.parse())?;
                let (host, port) = ((*host).to_owned(), port.parse()?);
                self.trusted(TrustedOp::Rebuild { host, port, hops }).await
            }
            (c, _) if COMMANDS.iter().any(|(k, _)| *k == c) => {
                Err(format!("wrong arguments for {c}; 'help' shows them").into())
            }
            (c, _) => Err(format!("unknown command {c}; 'help' lists them").into()),
        }
    }

    /// `peers`: the node's peer list.
    async fn peers(&self) -> Result<(), BoxError> {
        let peers = self.client.list().await?;
        println!("{}", crate::cli::count(peers.len() as u64, "peer"));
        for p in peers {
            println!("  {} ({}:{})", p.pid, p.host, p.port);
        }
        Ok(())
    }

    /// `files`: the files the node knows; their names replace those seen so far.
    async fn files(&self) -> Result<(), BoxError> {
        let files = self.client.files().await?;
        println!("{}", crate::cli::count(files.len() as u64, "file"));
        let mut known = Vec::new();
        for (name, owner, size) in files {
            match size {
                Some(n) => println!("  {name}  {n} bytes  at {owner}"),
                None => println!("  {name}  at {owner}"),
            }
            known.push(name);
        }
        if let Ok(mut n) = self.names.lock() {
            *n = known;
        }
        Ok(())
    }

    /// `search KEY`: who has a file; the names found join those seen so far.
    async fn search(&self, key: &str) -> Result<(), BoxError> {
        let search = Search {
            key: key.to_owned(),
            ttl: 8,
            wait: self.wait,
            quiet: super::search::DEFAULT_QUIET,
            count: 0,
        };
        let hits = if self.tunnelled {
            super::search::on_behalf(&self.client, &search).await?
        } else {
            super::search::with_return_address(&self.node, &search).await?
        };
        if hits.is_empty() {
            return Err(Box::new(super::search::NoAnswer {
                key: key.to_owned(),
                wait: self.wait,
            }));
        }
        for (name, owner) in &hits {
            println!("  {name}  at {owner}");
        }
        if let Ok(mut n) = self.names.lock() {
            for (name, _) in hits {
                if !n.contains(&name) {
                    n.push(name);
                }
            }
        }
        Ok(())
    }

    /// A trusted operation: the node's answer is printed; an `ERRO` answer is the
    /// command's error.
    async fn trusted(&self, op: TrustedOp) -> Result<(), BoxError> {
        let secret = self
            .secret
            .as_deref()
            .ok_or("this command needs the node's secret (--secret-file)")?;
        let replies = match self.client.trusted(secret, op).await {
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
            Ok(())
        } else {
            Err(refused.join("; ").into())
        }
    }
}

/// `help`: the commands.
fn help() -> Result<(), BoxError> {
    for (c, what) in COMMANDS {
        println!("  {c:<12} {what}");
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
