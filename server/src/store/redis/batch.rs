//! Decisions on a single Redis node queued so that concurrent ones share one script call: one
//! round trip and one script start for many requests, each still decided all-or-nothing and
//! in order (see `scripts/gcra.lua`).

use std::sync::Arc;

use redis::Script;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::connection::RedisConnection;
use super::ratelimit::run_decisions;
use crate::ratelimit::store::{BatchOutcome, LimitRequest, StoreError};

/// Requests decided by one script call at most: bounds the script's run time (Redis serves
/// nothing else meanwhile) and the reply's size.
const MAX_REQUESTS_PER_CALL: usize = 64;
/// Script calls sent and not yet answered; while all are out, requests queue up and leave
/// together with the next call. Fewer calls in flight make bigger batches: under h2load on
/// two cores, 2 reached 55-57% of the pipelined redis-benchmark ceiling where 8 reached 51%
/// (and one call per request, before batching, 42-45%).
const CALLS_IN_FLIGHT: usize = 2;
/// Requests waiting for a call; past this, callers wait to enqueue (their own timeout bounds
/// the wait).
const QUEUE: usize = 4096;

/// One request waiting for its decision.
struct Job {
    batch: Vec<LimitRequest>,
    reply: oneshot::Sender<Result<BatchOutcome, StoreError>>,
}

/// The queue's entrance; the task behind it ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the task that drains the queue into script calls on `conn`.
    pub(super) fn spawn(conn: RedisConnection, script: Arc<Script>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(drain(queue, conn, script));
        Self { jobs }
    }

    /// Decides `batch` (all or nothing) in the next script call.
    pub(super) async fn decide(&self, batch: &[LimitRequest]) -> Result<BatchOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            batch: batch.to_vec(),
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::permanent("the decision queue has stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::transient("the decision was dropped unanswered"))?
    }
}

/// Takes the queue's head, waits for a free call slot (more requests queue meanwhile), then
/// sends everything queued, up to the limit, as one script call.
async fn drain(mut queue: mpsc::Receiver<Job>, conn: RedisConnection, script: Arc<Script>) {
    let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_REQUESTS_PER_CALL {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up (its timeout passed) is not decided: nothing is taken for it.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (conn, script) = (conn.clone(), script.clone());
        tokio::spawn(async move {
            let result = {
                let requests: Vec<Vec<&LimitRequest>> =
                    jobs.iter().map(|job| job.batch.iter().collect()).collect();
                run_decisions(&conn, &script, &requests).await
            };
            match result {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
