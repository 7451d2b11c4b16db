//! The compute threads of the CPU backend: a fork-join pool whose workers spin between the
//! parallel loops of one forward pass (as llama.cpp's do) and sleep between passes. A forward
//! pass runs dozens of short parallel loops per token; waking sleeping threads for each one
//! (what a general pool does) costs more than the loops themselves.
//!
//! `ComputePool::run` runs a closure on the calling thread with the pool installed; inside it,
//! `for_each_chunk_mut` splits work over the caller and the workers. Outside a pool (tests, or a
//! loop nested inside a task) the same call runs serially.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How many threads the CPU backend computes with: the machine's, at most 16, or
/// `ARMATURE_THREADS` when set. Read once (finding the machine's reads cgroup files).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        if let Some(n) = std::env::var("ARMATURE_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
            return n.clamp(1, 256);
        }
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(16)
    })
}

/// One parallel loop: `tasks` calls of `f`, by index.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    /// The loop being run, or null. Points into the stack frame of `for_each_task`, which does
    /// not return before every worker that read it has left (`inside == 0`).
    job: AtomicPtr<Job<'static>>,
    /// Bumped per loop, so a worker joins each loop at most once.
    epoch: AtomicU64,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Workers holding the current job pointer.
    inside: AtomicUsize,
    /// A task panicked in a worker.
    panicked: AtomicBool,
    /// A pass is running: workers spin instead of sleeping.
    active: Mutex<bool>,
    wake: Condvar,
    spinning: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    /// Take tasks until none are left; false if one panicked.
    fn work(&self, job: &Job<'_>) -> bool {
        let mut ok = true;
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= job.tasks {
                return ok;
            }
            ok &= catch_unwind(AssertUnwindSafe(|| (job.f)(i))).is_ok();
            self.done.fetch_add(1, SeqCst);
        }
    }

    fn worker(&self) {
        let mut seen = self.epoch.load(SeqCst);
        let mut idle_spins = 0u32;
        while !self.stop.load(SeqCst) {
            if !self.spinning.load(SeqCst) {
                let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
                while !*active && !self.stop.load(SeqCst) {
                    active = self.wake.wait(active).unwrap_or_else(|e| e.into_inner());
                }
                continue;
            }
            if self.epoch.load(SeqCst) == seen || self.job.load(SeqCst).is_null() {
                idle_spins += 1;
                if idle_spins.is_multiple_of(4096) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle_spins = 0;
            self.inside.fetch_add(1, SeqCst);
            seen = self.epoch.load(SeqCst);
            let job = self.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: non-null while the loop runs; its owner waits for `inside == 0`.
                let job = unsafe { &*job };
                if !self.work(job) {
                    self.panicked.store(true, SeqCst);
                }
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }
}

pub struct ComputePool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The pool installed on this thread by `ComputePool::run`, if any.
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

impl ComputePool {
    /// A pool computing with `threads` threads: the caller of `run` and `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            active: Mutex::new(false),
            wake: Condvar::new(),
            spinning: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("armature-cpu-{i}")).spawn(move || shared.worker())
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { shared, workers })
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f` on this thread with the pool's workers awake and spinning.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Pass<'a>(&'a Shared, *const Shared);
        impl Drop for Pass<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.1));
                self.0.spinning.store(false, SeqCst);
                *self.0.active.lock().unwrap_or_else(|e| e.into_inner()) = false;
            }
        }
        *self.shared.active.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.spinning.store(true, SeqCst);
        self.shared.wake.notify_all();
        let previous = CURRENT.with(|c| c.replace(Arc::as_ptr(&self.shared)));
        let _pass = Pass(&self.shared, previous);
        f()
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        drop(self.shared.active.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Call `f(i)` for `i` in `0..tasks`, over the installed pool's threads (serially without one).
/// Panics if a task panicked, after every task has finished.
pub fn for_each_task(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = CURRENT.with(|c| c.get());
    if pool.is_null() || tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    // SAFETY: `CURRENT` is set only inside `ComputePool::run`, which borrows the pool (and so
    // its `Shared`) for as long as it is set.
    let shared = unsafe { &*pool };
    // A task that itself calls `for_each_task` runs its loop serially.
    CURRENT.with(|c| c.set(std::ptr::null()));
    let job = Job { f, tasks };
    shared.next.store(0, SeqCst);
    shared.done.store(0, SeqCst);
    shared.panicked.store(false, SeqCst);
    // SAFETY (lifetime): the pointer is cleared, and every worker that read it has left, before
    // this frame (and `job`) goes away; see below.
    let ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
    shared.job.store(ptr, SeqCst);
    shared.epoch.fetch_add(1, SeqCst);
    let ok = shared.work(&job);
    while shared.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    shared.job.store(std::ptr::null_mut(), SeqCst);
    while shared.inside.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    CURRENT.with(|c| c.set(pool));
    if !ok || shared.panicked.load(SeqCst) {
        panic!("a task of a parallel loop panicked");
    }
}

/// Split `data` into chunks of `chunk` elements (the last may be shorter) and call
/// `f(index, chunk)` for each, over the installed pool's threads.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let len = data.len();
    let shared = SharedMut::new(data);
    for_each_task(len.div_ceil(chunk), &|i| {
        let start = i * chunk;
        // SAFETY: each index runs exactly once and the chunks are disjoint.
        f(i, unsafe { shared.slice(start, chunk.min(len - start)) })
    });
}

/// A mutable slice that parallel tasks write disjoint parts of.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only reach the slice through `slice`, whose callers promise disjoint ranges.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(data: &'a mut [T]) -> Self {
        Self { ptr: data.as_mut_ptr(), len: data.len(), _slice: std::marker::PhantomData }
    }

    /// `data[start..start + len]`.
    ///
    /// # Safety
    /// No two live results may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "range inside the slice");
        // SAFETY: in bounds (checked above); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_once_inside_and_outside_a_pool() {
        let mut pool = ComputePool::new(3).unwrap();
        assert_eq!(pool.threads(), 3);
        let fill = |data: &mut Vec<u32>| {
            for_each_chunk_mut(data, 7, |i, c| {
                for (j, v) in c.iter_mut().enumerate() {
                    *v += (i * 7 + j) as u32;
                }
            })
        };
        for _ in 0..200 {
            let mut data = vec![1u32; 1000];
            pool.run(|| fill(&mut data));
            assert!(data.iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
        }
        let mut data = vec![0u32; 10];
        fill(&mut data);
        assert_eq!(data, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let mut pool = ComputePool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|| for_each_task(64, &|i| assert!(i != 40, "task 40")));
        }));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(|| {
            for_each_task(100, &|i| {
                sum.fetch_add(i, SeqCst);
                // Nested loops run serially and do not disturb the outer one.
                for_each_task(3, &|_| {});
            })
        });
        assert_eq!(sum.into_inner(), 4950);
    }
}
