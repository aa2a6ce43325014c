//! Throughput of `core::queue::WorkQueue`: add, get and done per second with one producer
//! and one or four workers on a two-thread tokio runtime, with distinct keys, with many adds of
//! few keys (de-duplication) and with delayed adds; once without and once with the Prometheus
//! recorder installed.
//!
//! Run with `cargo bench -p purelb --bench queue`; each scenario prints
//! `queue: <scenario>: N items in X ms = Y items/s`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use purelb::core::queue::WorkQueue;

/// Items per scenario.
const ITEMS: usize = 200_000;
/// Distinct keys in the de-duplication scenario.
const HOT_KEYS: u64 = 100;
/// Marks the end of the producer's adds in the de-duplication scenario.
const LAST: u64 = u64::MAX;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        println!("queue: {} CPUs, tokio runtime with 2 worker threads", std::thread::available_parallelism()?);
        run_all("").await?;
        let recorder = purelb::telemetry::build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
        run_all(", prometheus recorder").await?;
        let adds = handle.render().lines().filter(|l| l.starts_with("purelb_workqueue_adds_total")).count();
        if adds == 0 {
            bail!("the recorder saw no queue metrics");
        }
        Ok(())
    })
}

async fn run_all(suffix: &str) -> anyhow::Result<()> {
    let (n, took) = add_then_drain_in_one_task();
    report(&format!("add {ITEMS} keys then get+done them, one task{suffix}"), n, took);
    let (n, took) = producer_and_workers(1).await?;
    report(&format!("1 producer + 1 worker, distinct keys{suffix}"), n, took);
    let (n, took) = producer_and_workers(4).await?;
    report(&format!("1 producer + 4 workers, distinct keys{suffix}"), n, took);
    let (adds, processed, took) = de_duplication().await?;
    report(
        &format!("1 producer + 1 worker, {adds} adds of {HOT_KEYS} keys, {processed} processed{suffix}"),
        adds,
        took,
    );
    let (n, took) = delayed(4).await?;
    report(&format!("1 producer + 4 workers, add_after 0-9 ms, distinct keys{suffix}"), n, took);
    Ok(())
}

fn report(scenario: &str, items: usize, took: Duration) {
    let per_second = items as f64 / took.as_secs_f64();
    println!("queue: {scenario}: {items} items in {:.1} ms = {per_second:.0} items/s", took.as_secs_f64() * 1e3);
}

/// The bookkeeping alone: no waiting, no waking.
fn add_then_drain_in_one_task() -> (usize, Duration) {
    let queue = WorkQueue::new("bench-single");
    let start = Instant::now();
    for key in 0..ITEMS as u64 {
        queue.add(key);
    }
    let mut processed = 0;
    while let Some(claim) = queue.try_get() {
        claim.done();
        processed += 1;
    }
    (processed, start.elapsed())
}

/// Workers that count what they process and stop the queue after `items`.
fn spawn_workers(
    queue: &WorkQueue<u64>,
    workers: usize,
    items: usize,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let processed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..workers)
        .map(|_| {
            let (queue, processed) = (queue.clone(), Arc::clone(&processed));
            tokio::spawn(async move {
                while let Some(claim) = queue.get().await {
                    claim.succeeded();
                    if processed.fetch_add(1, Ordering::Relaxed) + 1 == items {
                        queue.shutdown();
                    }
                }
            })
        })
        .collect();
    (processed, tasks)
}

async fn producer_and_workers(workers: usize) -> anyhow::Result<(usize, Duration)> {
    let queue = WorkQueue::new(format!("bench-{workers}-workers"));
    let start = Instant::now();
    let (processed, tasks) = spawn_workers(&queue, workers, ITEMS);
    let producer = tokio::spawn({
        let queue = queue.clone();
        async move {
            for key in 0..ITEMS as u64 {
                queue.add(key);
                if key % 64 == 0 {
                    // A watch stream hands over events in batches, not all at once.
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    producer.await?;
    for task in tasks {
        task.await?;
    }
    Ok((processed.load(Ordering::Relaxed), start.elapsed()))
}

/// Many adds of few keys: most adds merge into a pending item. Returns (adds, processed, time).
async fn de_duplication() -> anyhow::Result<(usize, usize, Duration)> {
    let queue = WorkQueue::<u64>::new("bench-dedup");
    let start = Instant::now();
    let worker = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut processed = 0;
            while let Some(claim) = queue.get().await {
                processed += 1;
                if *claim == LAST {
                    claim.done();
                    // Alone, this worker has nothing in flight: whatever is pending is ready.
                    while let Some(claim) = queue.try_get() {
                        claim.done();
                        processed += 1;
                    }
                    queue.shutdown();
                }
            }
            processed
        }
    });
    for n in 0..ITEMS as u64 {
        queue.add(n % HOT_KEYS);
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    queue.add(LAST);
    let processed = worker.await?;
    Ok((ITEMS, processed, start.elapsed()))
}

/// Every item delayed by 0 to 9 ms.
async fn delayed(workers: usize) -> anyhow::Result<(usize, Duration)> {
    let queue = WorkQueue::new("bench-delayed");
    let start = Instant::now();
    let (processed, tasks) = spawn_workers(&queue, workers, ITEMS);
    for key in 0..ITEMS as u64 {
        queue.add_after(key, Duration::from_millis(key % 10));
        if key % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for task in tasks {
        task.await?;
    }
    Ok((processed.load(Ordering::Relaxed), start.elapsed()))
}
