//! The record of skipped tests ([`crate::support::skip`]): a skip shows in
//! the output even though libtest captures what a passing test prints, the run
//! ends with the list of skips, the list is in the tally file, and under
//! `CI=true` a skip is a failure. Checked by running this test binary again,
//! on one test that always skips.

use std::process::Stdio;

use crate::support::{spawn_guard, within, TALLY_HEADING};

/// The test the child process runs.
const SKIPPER: &str = "skips::a_test_that_cannot_run_here";
const REASON: &str = "it is run only by skips::a_skip_is_shown_listed_at_the_end_and_fails_in_ci";

/// Always skips; run as a child process by the test below, which sets
/// `P2PIPE_SKIP_TALLY` so that this run's own record is left alone.
#[test]
#[ignore = "run as a child process by skips::a_skip_is_shown_listed_at_the_end_and_fails_in_ci"]
fn a_test_that_cannot_run_here() {
    assert!(
        std::env::var_os("P2PIPE_SKIP_TALLY").is_some(),
        "run by {REASON}, which sets P2PIPE_SKIP_TALLY"
    );
    crate::support::skip("a_test_that_cannot_run_here", REASON);
}

/// Runs [`SKIPPER`] in a child process of this test binary, with output
/// captured as usual (no `--nocapture`): its exit status and its stdout and
/// stderr in the order written (both go to one file).
async fn run_skipper(tally: &std::path::Path, ci: bool) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([SKIPPER, "--exact", "--ignored", "--test-threads=1"])
        .env("P2PIPE_SKIP_TALLY", tally)
        .env_remove("RUST_TEST_NOCAPTURE")
        .env_remove("CI")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .kill_on_drop(true);
    if ci {
        cmd.env("CI", "true");
    }
    // Held until the child has exited: see `spawn_guard`.
    let guard = spawn_guard().await;
    let mut child = cmd.spawn().expect("run the test binary again");
    let status = within(child.wait()).await.unwrap();
    drop(guard);
    (
        status.success(),
        std::fs::read_to_string(&out_path).unwrap(),
    )
}

#[tokio::test]
async fn a_skip_is_shown_listed_at_the_end_and_fails_in_ci() {
    let dir = tempfile::tempdir().unwrap();
    let tally = dir.path().join("skipped-tests.txt");
    std::fs::write(&tally, "SKIPPED an::older_run: stale\n").unwrap();
    let line = format!("SKIPPED {SKIPPER}: {REASON}");

    let (passed, out) = run_skipper(&tally, false).await;
    assert!(passed, "outside CI a skip passes:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |want: &str| lines.iter().position(|l| l.contains(want));
    let summary = at("test result: ok. 1 passed").unwrap_or_else(|| panic!("{out}"));
    // Shown at once (libtest may have begun the line with the test's name), despite
    // the capture of a passing test's output...
    let shown = at(&line).unwrap_or_else(|| panic!("no {line:?} in\n{out}"));
    assert!(shown < summary, "{out}");
    // ...and listed again after libtest's summary, at the very end.
    let heading = at(TALLY_HEADING).unwrap_or_else(|| panic!("no tally in\n{out}"));
    assert!(heading > summary, "{out}");
    assert_eq!(lines.get(heading + 1), Some(&line.as_str()), "{out}");
    assert_eq!(lines.len(), heading + 3, "the list ends the output:\n{out}");
    // The file holds this run's skip, and nothing of the older run.
    assert_eq!(
        std::fs::read_to_string(&tally).unwrap(),
        format!("{line}\n")
    );

    let (passed, out) = run_skipper(&tally, true).await;
    assert!(!passed, "under CI=true a skip fails:\n{out}");
    assert!(
        out.contains("cannot be skipped under CI=true") && out.contains(REASON),
        "{out}"
    );
    assert!(
        !out.contains("SKIPPED "),
        "a failure is not listed as a skip:\n{out}"
    );
    assert!(!tally.exists(), "nor recorded as one");
}
