//! The compute pool runs every task exactly once per job, across many back-to-back jobs (the case the
//! generation-tagged claims guard), inline when nested, and re-raises a task's panic in the caller.
use inhaus_kernels::pool::{init, parallel_for};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn every_task_runs_exactly_once_across_many_jobs() {
    init(2);
    // Fewer jobs under Miri, which interprets every spin of the workers.
    let jobs = if cfg!(miri) { 40 } else { 2000 };
    for job in 0..jobs {
        let n = 1 + job % 37;
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(n, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(
            hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
            "job {job}"
        );
    }
}

#[test]
fn nested_calls_run_inline() {
    let total = AtomicUsize::new(0);
    parallel_for(4, |_| {
        parallel_for(3, |_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(total.load(Ordering::Relaxed), 12);
}

#[test]
fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
    let r = std::panic::catch_unwind(|| {
        parallel_for(8, |i| {
            if i == 5 {
                panic!("task 5 fails");
            }
        })
    });
    assert!(r.is_err());
    let count = AtomicUsize::new(0);
    parallel_for(16, |_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(count.load(Ordering::Relaxed), 16);
}
