//! Timers on the shard's own reactor.

use std::future::Future;
use std::time::Duration;

use futures::future::{select, Either};

pub(crate) async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Lets the reactor run before the caller goes on. A plain `yield_now`
/// is not enough: glommio polls for IO only when its task queues run dry
/// or the preemption timer (10 ms here) fires, so a loop that merely
/// yields would keep arriving requests waiting that long. A short timer
/// takes this task off the run queue, so IO is polled at once.
pub(crate) async fn breathe() {
    glommio::timer::sleep(Duration::from_micros(20)).await;
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
