//! Timers on the shard's own reactor.

use std::future::Future;
use std::time::Duration;

use futures::future::{select, Either};

pub(crate) async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `fut` for at most `d`; the future is dropped (cancelled) on expiry.
pub(crate) async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let fut = std::pin::pin!(fut);
    let timer = std::pin::pin!(glommio::timer::Timer::new(d));
    match select(fut, timer).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(Elapsed),
    }
}
