//! The interleaved comparison shared by `benches/paired.rs` and `benches/daemon.rs`.
//!
//! Criterion measures all of a baseline's samples, then all of the other side's; on a
//! small shared machine the scheduler's state can drift in between. Here every round
//! measures the raw tokio side and p2pipe's side back to back, in alternating order, and
//! the ratio is taken per round. The median of those ratios is the figure to quote.
//! `P2PIPE_ROUNDS` sets the rounds (default 15) and `P2PIPE_ONLY=udp` runs only the
//! comparisons whose name contains `udp`. The lab's measurement of the TURN relay
//! beside the direct path (tests/integration/lab/bench.rs) includes this file too.

use std::future::Future;
use std::time::Duration;

/// How long one round may take before the bench panics instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `f`, panicking if it takes longer than [`LIMIT`].
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {LIMIT:?}"))
}

/// Something measured in rounds: one call runs one round and returns its time.
pub trait Side {
    /// Runs one round.
    async fn round(&mut self) -> Duration;
}

/// What one comparison measured: the median of the per-round rate ratios `raw / ours`,
/// their range, and each side's median round.
#[derive(Debug, Clone, Copy)]
pub struct Compared {
    /// The median of the per-round ratios (1.00 means as fast as raw).
    pub median: f64,
    /// The lowest per-round ratio.
    pub lo: f64,
    /// The highest per-round ratio.
    pub hi: f64,
    /// The raw side's median round.
    pub raw: Duration,
    /// Our side's median round.
    pub ours: Duration,
}

/// Measures `raw` and `ours` round by round and prints the median of `raw / ours`
/// (a rate ratio: 1.00x means as fast as raw tokio). `label` names our side. `None`
/// when `P2PIPE_ONLY` leaves the comparison out.
pub async fn compare(
    name: &str,
    label: &str,
    rounds: usize,
    raw: &mut impl Side,
    ours: &mut impl Side,
) -> Option<Compared> {
    if std::env::var("P2PIPE_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return None;
    }
    // One warm-up round each.
    bounded(name, raw.round()).await;
    bounded(name, ours.round()).await;
    let mut ratios = Vec::with_capacity(rounds);
    let (mut raws, mut oursv) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let (r, o) = if i % 2 == 0 {
            let r = bounded(name, raw.round()).await;
            (r, bounded(name, ours.round()).await)
        } else {
            let o = bounded(name, ours.round()).await;
            (bounded(name, raw.round()).await, o)
        };
        ratios.push(r.as_secs_f64() / o.as_secs_f64());
        raws.push(r.as_secs_f64());
        oursv.push(o.as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let got = Compared {
        median: med(&mut ratios),
        lo,
        hi,
        raw: Duration::from_secs_f64(med(&mut raws)),
        ours: Duration::from_secs_f64(med(&mut oursv)),
    };
    println!(
        "{name:<22} {label}/raw median {:.2}x (rounds {:.2}-{:.2}); raw {:.2} ms, {label} {:.2} ms per round",
        got.median,
        got.lo,
        got.hi,
        got.raw.as_secs_f64() * 1e3,
        got.ours.as_secs_f64() * 1e3,
    );
    Some(got)
}

/// Runs `all(rounds)` on a 2-worker runtime (on a worker thread, as servers run: the
/// thread that calls `block_on` is not a worker, and every wake-up of it would be a
/// cross-thread one), then on a current-thread runtime, where placement is fixed and the
/// ratio is the cost of the code alone.
pub fn on_both_runtimes<F, Fut>(all: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // `cargo test --benches` runs a bench with `--bench` absent; stay quick then.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("P2PIPE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 15 } else { 1 });
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("== multi-thread runtime, 2 workers");
    multi
        .block_on(multi.spawn(all(rounds)))
        .expect("the comparison panicked");
    drop(multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("== current-thread runtime");
    single.block_on(all(rounds));
}
