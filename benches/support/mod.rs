//! What every criterion bench here needs: its runtime, and a limit on every step so a
//! bug panics with a message instead of hanging the bench. Each bench defines `LIMIT`.

use std::future::Future;

use tokio::runtime::Runtime;

use super::LIMIT;

/// One multi-thread runtime, for both sides of a group, so the ratios hold.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `fut` on `rt`, panicking if it takes longer than `LIMIT`.
pub fn bounded<T>(rt: &Runtime, what: &str, fut: impl Future<Output = T>) -> T {
    rt.block_on(async {
        tokio::time::timeout(LIMIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{what}: took longer than {LIMIT:?}"))
    })
}
