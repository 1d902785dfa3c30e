//! The compute thread pool of the kernels: `parallel_for(n, f)` runs `f(0..n)` on the calling thread and
//! the workers, which spin between jobs instead of sleeping (waking a parked thread costs tens of
//! microseconds, as much as a small matmul) and park only after a stretch of idleness.
//!
//! Tasks are claimed from a counter tagged with the job's generation, so a worker that arrives late
//! can never claim a task of a job it did not read, and the caller returns only after every claimed
//! task has finished (which is what makes lending it a borrowed closure sound).
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(2000);

type TaskFn = dyn Fn(usize) + Sync;

#[derive(Clone, Copy)]
struct Job {
    generation: u64,
    n: usize,
    f: *const TaskFn,
}
// SAFETY: `f` points to a `Sync` closure that outlives every call made through it (see `run`).
unsafe impl Send for Job {}

struct Shared {
    /// The current job's generation; bumped to publish a job.
    generation: AtomicU64,
    /// `generation << 32 | next task index` of the current job.
    claim: AtomicU64,
    done: AtomicUsize,
    job: Mutex<Option<Job>>,
    sleepers: AtomicUsize,
    wake: Condvar,
    wake_lock: Mutex<()>,
    shutdown: AtomicBool,
    /// Set when a task panicked; the caller re-raises it after the job.
    panicked: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Serializes callers: one job at a time.
    submit: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of compute threads (the caller plus `threads - 1` workers). Only the first call,
/// or the first use, decides; later calls return `false`.
pub fn init(threads: usize) -> bool {
    let mut fresh = false;
    POOL.get_or_init(|| {
        fresh = true;
        Pool::new(threads.max(1))
    });
    fresh
}

/// The number of compute threads.
pub fn threads() -> usize {
    pool().workers + 1
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Pool::new(n)
    })
}

/// Runs `f(i)` for every `i < n`, spread over the compute threads; returns when all have finished.
pub fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    pool().run(n, &f);
}

fn try_claim(shared: &Shared, generation: u64, n: usize) -> Option<usize> {
    let mut cur = shared.claim.load(Ordering::Acquire);
    loop {
        if cur >> 32 != generation & 0xFFFF_FFFF {
            return None;
        }
        let idx = (cur & 0xFFFF_FFFF) as usize;
        if idx >= n {
            return None;
        }
        match shared
            .claim
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(idx),
            Err(actual) => cur = actual,
        }
    }
}

fn work(shared: &Shared, job: Job) {
    while let Some(i) = try_claim(shared, job.generation, job.n) {
        // SAFETY: the claim of task i succeeded and i has not finished, so the caller of this job is
        // still waiting in `run` and the closure is alive. (The reference is made only now: a worker
        // that read the job late may find every task claimed, and then its closure may be gone.)
        let f = unsafe { &*job.f };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
            shared.panicked.store(true, Ordering::Release);
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(shared: Arc<Shared>) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            if shared.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::AcqRel);
                let _g = if shared.generation.load(Ordering::Acquire) == seen {
                    shared
                        .wake
                        .wait_timeout(guard, Duration::from_millis(100))
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0)
                } else {
                    guard
                };
                shared.sleepers.fetch_sub(1, Ordering::AcqRel);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            work(&shared, job);
        }
    }
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = threads - 1;
        for i in 0..workers {
            let s = shared.clone();
            // A worker that cannot be spawned only means fewer threads; the caller does all tasks.
            if std::thread::Builder::new()
                .name(format!("inhaus-compute-{i}"))
                .spawn(move || worker(s))
                .is_err()
            {
                break;
            }
        }
        Self {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    fn run<'a>(&self, n: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if n == 0 {
            return;
        }
        // Nested calls, single tasks and single-threaded pools run inline.
        if n == 1 || self.workers == 0 || IN_POOL.with(|c| c.get()) {
            (0..n).for_each(f);
            return;
        }
        let _one = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let generation = s.generation.load(Ordering::Acquire) + 1;
        // SAFETY: (lifetime erasure) this function does not return before `done == n`, and no task
        // can be claimed once all `n` are, so no call through `f` outlives this frame.
        let f_static: *const TaskFn =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static TaskFn>(f) };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            s.done.store(0, Ordering::Release);
            s.claim
                .store((generation & 0xFFFF_FFFF) << 32, Ordering::Release);
            *job = Some(Job {
                generation,
                n,
                f: f_static,
            });
        }
        s.generation.store(generation, Ordering::Release);
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _g = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        work(
            s,
            Job {
                generation,
                n,
                f: f_static,
            },
        );
        IN_POOL.with(|c| c.set(false));
        while s.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a compute task panicked");
        }
    }
}
