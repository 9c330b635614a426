//! A panic on a shard thread ends the whole process.
//!
//! A shard owns a slice of the registry and its own listener: when its
//! thread dies the kernel keeps queueing connections on its socket, every
//! request that asks all shards waits for an answer that never comes, and
//! the process looks alive to a supervisor. Half a server is worse than
//! none, so a panic on a shard thread logs one line and exits with status
//! 101 (the code Rust uses for a panicking `main`): systemd or Docker then
//! restart it, and recovery from the database brings the state back.
//!
//! Only threads that called [`arm`] are affected: the database writer and
//! the threads of a test harness keep Rust's default behaviour.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// The exit status of a process ended by a shard's panic.
pub const EXIT_STATUS: i32 = 101;

/// Makes a panic on the calling thread end the process.
pub(crate) fn arm() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The default hook prints the message and location (and a
            // backtrace with RUST_BACKTRACE); keep that.
            previous(info);
            if ARMED.with(Cell::get) {
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("unnamed");
                tracing::error!(
                    thread = name,
                    panic = %info,
                    "a shard panicked: exiting with status {EXIT_STATUS} so a supervisor restarts the process"
                );
                std::process::exit(EXIT_STATUS);
            }
        }));
    });
    ARMED.with(|a| a.set(true));
}
