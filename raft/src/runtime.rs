//! openraft's async runtime for Norn: tokio for tasks and time (so turmoil's simulated clock
//! drives it), and a seedable random source for election timeouts (so one seed fixes a run).

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// From now on, a panic inside a Raft task spawned on this thread is recorded (see
/// [`take_task_panics`]) and the task then waits forever, instead of failing its `JoinHandle`.
///
/// For the simulator: turmoil's hosts run tokio with `UnhandledPanic::ShutdownRuntime`, and a
/// runtime shutting down from inside a panicking task aborts the whole process; recorded, the
/// panic becomes a violation of the run ("a node never panics"). Production never calls this
/// and keeps tokio's behaviour: openraft sees the failed task and reports `Fatal::Panicked`.
pub fn record_task_panics() {
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

/// The panics recorded on this thread since the last call, and stops recording.
pub fn take_task_panics() -> Vec<String> {
    PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default()
}

fn recording_panics() -> bool {
    PANICS.with(|p| p.borrow().is_some())
}

fn record_panic(payload: Box<dyn std::any::Any + Send>) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    PANICS.with(|p| {
        if let Some(v) = p.borrow_mut().as_mut() {
            v.push(msg);
        }
    });
}

/// Seeds this thread's Raft random source. The simulator calls it once per simulated host
/// thread; production never does and gets a seed from the OS.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Handle to the per-thread random source.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        with_rng(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        with_rng(|r| r.try_fill_bytes(dest))
    }
}

fn with_rng<T>(f: impl FnOnce(&mut StdRng) -> T) -> T {
    RNG.with(|r| {
        let mut r = r.borrow_mut();
        let rng = r.get_or_insert_with(StdRng::from_entropy);
        f(rng)
    })
}

/// The runtime type openraft is instantiated with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NornRuntime;

impl AsyncRuntime for NornRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        if !recording_panics() {
            return tokio::task::spawn(future);
        }
        tokio::task::spawn(async move {
            match std::panic::AssertUnwindSafe(future).catch_unwind().await {
                Ok(out) => out,
                Err(payload) => {
                    record_panic(payload);
                    std::future::pending().await
                }
            }
        })
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}
